-- wrk script for the serving benchmarks: cycles through pre-built JSON bodies,
-- one per line of the file named by $BODIES, POSTed to $WRK_PATH.
--
-- Closed loop (default): every connection sends its next request as soon as the
-- previous answer arrives; wrk's own figures are the result (maximum throughput).
--
-- Paced, open-loop schedule ($WRK_RATE requests/s per wrk thread): request n is
-- *scheduled* at t0 + n / rate from one schedule shared by all connections of the
-- thread; `delay()` holds a free connection until its slot. The slot time (µs) is
-- written into the body's request_id, which the server echoes first in its answer,
-- so `response()` knows which slot an answer belongs to and records latency from
-- the SCHEDULED send time. A stalled server therefore cannot hide the requests it
-- delayed (no coordinated omission) as long as a connection is free; when all are
-- busy, the next slots go out late and their lateness is counted. What remains is
-- the usual limit of a fixed connection pool: at most `-c` requests in flight.
-- `done()` writes one line per answer to $LATENCY_OUT: slot offset (µs from t0),
-- latency from the slot (µs; from the actual send if that was earlier), latency
-- from the actual send (µs), HTTP status; slot -1 for an error answer (no request_id),
-- -2 for the answer to wrk's unscheduled first request, if it is ever sent.

local bodies = {}
for line in io.lines(os.getenv("BODIES")) do bodies[#bodies + 1] = line end
local path = os.getenv("WRK_PATH") or "/v1/predict"
local rate = tonumber(os.getenv("WRK_RATE") or "")
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

if not rate then
  request = function()
    i = i % #bodies + 1
    return wrk.format(nil, path, nil, bodies[i])
  end
  return
end

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } ctrops_timespec;
  int clock_gettime(int clk_id, ctrops_timespec *tp);
]]
local ts = ffi.new("ctrops_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
end

-- split each body around its request_id value, so a request carries its slot
local heads, tails = {}, {}
for n, b in ipairs(bodies) do
  local s, e = string.find(b, '"request_id":"[^"]*"')
  if s == nil then error("body " .. n .. " has no request_id to carry the schedule") end
  heads[n] = string.sub(b, 1, s - 1) .. '"request_id":"s'
  tails[n] = '"' .. string.sub(b, e + 1)
end

local interval = 1000000 / rate -- µs between slots
local t0 = nil
local next_slot = 0              -- index of the next slot to hand out
local pending = {}               -- slots handed to delay() but not yet sent (FIFO)
local p_head, p_tail = 1, 0
local sent_at = {}               -- slot -> actual send time
-- globals: done() reads them from each thread's Lua state with thread:get()
rec_slot, rec_lat, rec_svc, rec_status = {}, {}, {}, {}
n_rec = 0

delay = function()
  local now = now_us()
  if t0 == nil then t0 = now end
  local slot = next_slot
  next_slot = next_slot + 1
  p_tail = p_tail + 1
  pending[p_tail] = slot
  local wait = t0 + slot * interval - now
  if wait <= 0 then return 0 end
  return math.floor(wait / 1000) -- wrk's timers have millisecond resolution
end

request = function()
  i = i % #bodies + 1
  if p_head > p_tail then
    -- wrk calls request() once per thread before any delay() (a request it does not send):
    -- no slot is taken, and should it be sent its answer is recorded as unscheduled
    return wrk.format(nil, path, nil, heads[i] .. "u-" .. i .. tails[i])
  end
  -- timers fire in deadline order, so the earliest pending slot is this connection's (at worst an
  -- earlier one: the latency is then overstated, never understated)
  local slot = pending[p_head]
  pending[p_head] = nil
  p_head = p_head + 1
  sent_at[slot] = now_us()
  return wrk.format(nil, path, nil, heads[i] .. slot .. "-" .. i .. tails[i])
end

response = function(status, headers, body)
  local done_at = now_us()
  local slot = tonumber(string.match(body, '^{"request_id":"s(%d+)%-'))
  n_rec = n_rec + 1
  rec_status[n_rec] = status
  if slot ~= nil and sent_at[slot] ~= nil then
    -- a request that left before its slot (wrk's timers round to milliseconds) is timed from
    -- its actual send; one that left late, from its slot
    local sent = math.min(sent_at[slot], t0 + slot * interval)
    rec_slot[n_rec] = math.floor(slot * interval)
    rec_lat[n_rec] = done_at - sent
    rec_svc[n_rec] = done_at - sent_at[slot]
    sent_at[slot] = nil
  elseif string.find(body, '^{"request_id":"su%-') then -- the unscheduled request (see request())
    rec_slot[n_rec], rec_lat[n_rec], rec_svc[n_rec] = -2, -1, -1
  else -- an error answer carries no request_id: keep its status only
    rec_slot[n_rec], rec_lat[n_rec], rec_svc[n_rec] = -1, -1, -1
  end
end

local threads = {}
setup = function(thread) threads[#threads + 1] = thread end

done = function(summary, latency, requests)
  local out = assert(io.open(os.getenv("LATENCY_OUT") or "/dev/stdout", "w"))
  for _, t in ipairs(threads) do
    local n = t:get("n_rec") or 0
    local s, l, v, st = t:get("rec_slot"), t:get("rec_lat"), t:get("rec_svc"), t:get("rec_status")
    for k = 1, n do
      out:write(string.format("%d %d %d %d\n", s[k], l[k], v[k], st[k]))
    end
  end
  out:close()
end
