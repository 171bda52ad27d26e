"""registry stage of ctrops: MLflow runs, registered versions, aliases, pyfunc flavor.

Nothing here is imported by `import ctrops`; MLflow loads only when a
function of these modules is called (`pyfunc` imports it at module level).
"""
