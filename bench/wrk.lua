-- Cycles through pre-signed deliveries (wrk's Lua has no HMAC; bench/payloads.py signs them).
-- Arguments after "--": deliveries file, body file, headers file, thread count. Each thread takes every n-th
-- line, so no two threads send the same delivery id; "wrapped" counts laps past the end.
local threads = {}
local next_id = 1

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  local nthreads = tonumber(args[4])
  local file = io.open(args[2], "rb")
  body = file:read("*a")
  file:close()
  headers = {}
  for line in io.lines(args[3]) do
    local name, value = line:match("^([^:]+): (.*)$")
    if name then headers[name] = value end
  end
  deliveries = {}
  local n = 0
  for line in io.lines(args[1]) do
    if n % nthreads == tid - 1 then
      local id, ts, sig = line:match("^(%S+) (%S+) (%S+)$")
      deliveries[#deliveries + 1] = {id, ts, sig}
    end
    n = n + 1
  end
  index = 0
  wrapped = 0
  statuses = {}
end

function request()
  index = index + 1
  if index > #deliveries then
    index = 1
    wrapped = wrapped + 1
  end
  local d = deliveries[index]
  headers["X-Gitlab-Event-UUID"] = d[1]
  headers["Idempotency-Key"] = d[1]
  headers["webhook-id"] = d[1]
  headers["webhook-timestamp"] = d[2]
  headers["webhook-signature"] = d[3]
  return wrk.format("POST", nil, headers, body)
end

function response(status, hdrs, resp_body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local codes = {}
  local laps = 0
  for _, thread in ipairs(threads) do
    for code, count in pairs(thread:get("statuses")) do
      codes[tostring(code)] = (codes[tostring(code)] or 0) + count
    end
    laps = laps + thread:get("wrapped")
  end
  local parts = {}
  for code, count in pairs(codes) do parts[#parts + 1] = string.format('"%s": %d', code, count) end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "wrapped": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"mean": %.1f, "p50": %d, "p90": %d, "p99": %d, "max": %d}, "statuses": {%s}}\n',
    summary.requests, summary.duration, summary.bytes, laps,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    table.concat(parts, ", ")))
end
