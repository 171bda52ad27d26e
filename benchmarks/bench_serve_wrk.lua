-- wrk script for the serving benchmarks: cycles through pre-built JSON bodies,
-- one per line of the file named by $BODIES, POSTed to $WRK_PATH.
local bodies = {}
for line in io.lines(os.getenv("BODIES")) do bodies[#bodies + 1] = line end
local path = os.getenv("WRK_PATH") or "/v1/predict"
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i % #bodies + 1
  return wrk.format(nil, path, nil, bodies[i])
end
