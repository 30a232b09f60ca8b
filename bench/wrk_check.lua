-- wrk script: check every reply, then print one JSON line of results.
--
--   wrk -t1 -c64 -d10s --latency -s bench/wrk_check.lua http://127.0.0.1:PORT/
--
-- A reply counts as good only with status 200 and the body "hello, world\n"
-- (what every server of http_servers.py answers); anything else is a mismatch.
-- The JSON line comes after wrk's own report; latencies are in milliseconds.

local expected = "hello, world\n"
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  good = 0
  mismatches = 0
end

function response(status, headers, body)
  if status == 200 and body == expected then
    good = good + 1
  else
    mismatches = mismatches + 1
  end
end

function done(summary, latency, requests)
  local total_good, total_mismatches = 0, 0
  for _, thread in ipairs(threads) do
    total_good = total_good + thread:get("good")
    total_mismatches = total_mismatches + thread:get("mismatches")
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "good": %d, "mismatches": %d, "duration_us": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f}\n',
    summary.requests, total_good, total_mismatches, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
