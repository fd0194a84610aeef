-- The OpenResty-style chain measured beside Turnpike's full chain (loadtest/peers.py writes the
-- nginx config that loads it). What it does for every request, in nginx's phases:
--   access: the X-Api-Key header's SHA-256 digest (OpenSSL through LuaJIT's FFI) looked up in a
--           table of consumers; 401 without a key or with an unknown one. Three fixed windows
--           per consumer (second, hour, calendar month) counted in a shared dict; 429 when one
--           is over its quota.
--   header: RateLimit-Policy and RateLimit fields (draft-ietf-httpapi-ratelimit-headers) for
--           the three windows, on answers and refusals alike.
--   log:    per-consumer request counters by status and a latency histogram (request time in
--           ten buckets, plus a sum), in a shared dict.
-- What it does not do: JWT, groups or scopes, usage rollups in a database, anomaly baselines, an
-- access log, traceparent.
local ffi = require "ffi"
ffi.cdef [[ unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *md); ]]

local digest_buf = ffi.new("unsigned char[32]")
local windows = ngx.shared.windows
local counters = ngx.shared.counters
local floor = math.floor

local _M = {}
local consumers = {}

local function from_hex(hex)
  return (hex:gsub("..", function(b) return string.char(tonumber(b, 16)) end))
end

-- `list`: { { sha256 = "hex", id = "name", rate = n, hour = n, month = n }, ... }
function _M.setup(list)
  for _, c in ipairs(list) do
    consumers[from_hex(c.sha256)] = c
    c.policy = string.format('"rate";q=%d;w=1, "hour";q=%d;w=3600, "month";q=%d;w=2592000',
      c.rate, c.hour, c.month)
  end
end

-- Seconds since the epoch at 00:00 UTC on the first of month `m` of year `y` (days from the
-- civil date, as in Howard Hinnant's algorithm).
local function month_start(y, m)
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = floor((153 * mp + 2) / 5)
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  return (era * 146097 + doe - 719468) * 86400
end

local month_of, month_from, month_until = -1, 0, 0

-- The calendar month (UTC) of `now` as a key part and the seconds left in it; recomputed
-- only when `now` leaves the month last seen.
local function month(now)
  if now >= month_until or now < month_from then
    local t = os.date("!*t", now)
    month_of = t.year * 100 + t.month
    month_from = month_start(t.year, t.month)
    month_until = t.month == 12 and month_start(t.year + 1, 1) or month_start(t.year, t.month + 1)
  end
  return month_of, month_until - now
end

local function problem(status, code, title)
  ngx.status = status
  ngx.header["Content-Type"] = "application/problem+json"
  ngx.say('{"type":"about:blank","status":', status, ',"code":"', code, '","title":"', title, '"}')
  return ngx.exit(status)
end

function _M.access()
  local key = ngx.req.get_headers()["x-api-key"]
  if type(key) ~= "string" then
    return problem(401, "missing_credentials", "An API key is required")
  end
  ffi.C.SHA256(key, #key, digest_buf)
  local c = consumers[ffi.string(digest_buf, 32)]
  if not c then
    return problem(401, "invalid_credentials", "The API key is not valid")
  end
  local now = ngx.time()
  local hour = floor(now / 3600)
  local m, month_left = month(now)
  local id = c.id
  local sec_n = windows:incr(id .. ":s:" .. now, 1, 0, 2)
  local hour_n = windows:incr(id .. ":h:" .. hour, 1, 0, 3601)
  local month_n = windows:incr(id .. ":m:" .. m, 1, 0, month_left + 1)
  local ctx = ngx.ctx
  ctx.consumer = c
  ctx.limits = string.format('"rate";r=%d;t=1, "hour";r=%d;t=%d, "month";r=%d;t=%d',
    c.rate > sec_n and c.rate - sec_n or 0,
    c.hour > hour_n and c.hour - hour_n or 0, (hour + 1) * 3600 - now,
    c.month > month_n and c.month - month_n or 0, month_left)
  if sec_n > c.rate or hour_n > c.hour or month_n > c.month then
    return problem(429, "rate_limited", "Too many requests")
  end
end

function _M.header()
  local ctx = ngx.ctx
  local c = ctx.consumer
  if c then
    ngx.header["RateLimit-Policy"] = c.policy
    ngx.header["RateLimit"] = ctx.limits
  end
end

local bounds = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1 }

function _M.log()
  local c = ngx.ctx.consumer
  local id = c and c.id or "-"
  counters:incr(id .. ":status:" .. ngx.status, 1, 0)
  local took = tonumber(ngx.var.request_time) or 0
  local bucket = "+Inf"
  for _, b in ipairs(bounds) do
    if took <= b then
      bucket = b
      break
    end
  end
  counters:incr(id .. ":le:" .. bucket, 1, 0)
  counters:incr(id .. ":sum", took, 0)
end

return _M
