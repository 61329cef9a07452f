#!lua name=flashsale
--[[
The flashsale Function library. Loaded with FUNCTION LOAD REPLACE by every
process at start-up and checked after every master switch; Functions are
replicated and persisted (AOF), so a promoted replica already has them.

Every key of a sale carries the `{sku}` hash tag, so a sale's keys share a
slot. Key layout (prefix P is configurable, `fs` by default):
  P:{sku}:sale            hash: name, description, price_cents, stock_total,
                          stock_left, sold, orders, confirmed, starts_ms,
                          ends_ms, per_user_limit, created_ms
  P:{sku}:units           hash: user id -> units held
  P:{sku}:first           hash: user id -> the user's first order id
  P:{sku}:uorders:<user>  list: the user's later order ids, oldest first (from
                          version 7 a shopper's first order is only in
                          `first`; lists written before also hold it, first)
  P:{sku}:idem:<user>:<k> string: order id created under Idempotency-Key k
  P:{sku}:order:<id>      hash: order_id, sku, user_id, qty, status,
                          created_ms, confirmed_ms
  P:{sku}:stream          the sale's order stream (consumed by the worker)
  P:{sku}:dead            dead letters of that stream (original fields as f:<name>)
  P:sales                 sorted set of skus by start time (catalog index)

Results are arrays whose first element names the outcome; errors are never
raised for business outcomes, so the caller never has to parse error text.
Times come from the server (TIME), so every app instance sees one clock.
]]

-- An integer, raised with every change. A process loads the library only
-- over an older version, never over a newer one (a rolling deploy must not
-- flip it back and forth), so a new version keeps every function and its
-- KEYS/ARGV/reply shape of the versions before it, and only adds.
local VERSION = '7'
local MAX_QTY = 1000000

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- An integer in [lo, hi] parsed from a string, or nil.
local function int_arg(s, lo, hi)
  if type(s) ~= 'string' or not string.match(s, '^%-?%d+$') or #s > 16 then
    return nil
  end
  local n = tonumber(s)
  if n == nil or n < lo or n > hi then
    return nil
  end
  return n
end

local function fs_version(keys, args)
  return VERSION
end

--[[
fs_purchase
KEYS: sale, units, first, uorders, order, stream, idem ('' when no key)
ARGV: user_id, qty, order_id
Returns one of:
  {'created', order_id, stock_left}
  {'exists', order_id}          -- this very order id exists (a retry of ours)
  {'already', order_id}         -- idempotency key reused, or user at the limit
  {'unknown_sku'} {'invalid_qty', limit, stock_left} {'not_started', starts_ms}
  {'ended'} {'sold_out'}
]]
local function fs_purchase(keys, args)
  local sale_k, units_k, first_k, uorders_k, order_k, stream_k, idem_k =
    keys[1], keys[2], keys[3], keys[4], keys[5], keys[6], keys[7]
  local user, order_id = args[1], args[3]
  if type(user) ~= 'string' or #user == 0 or #user > 64 or string.find(user, '[^%w_.:%-]') then
    return {'invalid_user'}
  end
  if type(order_id) ~= 'string' or #order_id == 0 or #order_id > 128 then
    return {'invalid_order_id'}
  end

  -- Our own retry after a lost reply or a failover: the order is already here.
  if redis.call('EXISTS', order_k) == 1 then
    return {'exists', order_id}
  end

  local sale = redis.call('HMGET', sale_k, 'stock_left', 'starts_ms', 'ends_ms', 'per_user_limit',
    'sold', 'orders')
  if not sale[1] then
    return {'unknown_sku'}
  end
  local stock_left, starts, ends, limit =
    tonumber(sale[1]), tonumber(sale[2]), tonumber(sale[3]), tonumber(sale[4])

  if idem_k ~= '' then
    local prior = redis.call('GET', idem_k)
    if prior then
      return {'already', prior}
    end
  end

  local qty = int_arg(args[2], 1, MAX_QTY)
  if qty == nil then
    return {'invalid_qty', limit, stock_left}
  end

  local held = tonumber(redis.call('HGET', units_k, user) or '0')
  if held + qty > limit then
    if held > 0 then
      return {'already', redis.call('HGET', first_k, user) or ''}
    end
    return {'invalid_qty', limit, stock_left}
  end

  local now = now_ms()
  if now < starts then
    return {'not_started', starts}
  end
  if now >= ends then
    return {'ended'}
  end
  if stock_left <= 0 then
    return {'sold_out'}
  end
  if stock_left < qty then
    return {'invalid_qty', limit, stock_left}
  end

  -- Every check passed: the writes below happen together or not at all.
  local sku = string.match(sale_k, '{(.*)}')
  -- One HSET of the three counters (read above, in this same atomic call)
  -- instead of three HINCRBYs: fewer commands to run and to replicate.
  redis.call('HSET', sale_k, 'stock_left', stock_left - qty,
    'sold', (tonumber(sale[5]) or 0) + qty, 'orders', (tonumber(sale[6]) or 0) + 1)
  redis.call('HINCRBY', units_k, user, qty)
  -- Most shoppers buy once (a limit of 1 is the usual flash sale): their
  -- order id goes to `first` only, and a list key is made for a second order.
  if held == 0 then
    redis.call('HSETNX', first_k, user, order_id)
  else
    redis.call('RPUSH', uorders_k, order_id)
  end
  redis.call('HSET', order_k,
    'order_id', order_id, 'sku', sku, 'user_id', user, 'qty', qty,
    'status', 'queued', 'created_ms', now)
  if idem_k ~= '' then
    redis.call('SET', idem_k, order_id)
  end
  redis.call('XADD', stream_k, '*', 'order_id', order_id, 'sku', sku, 'user_id', user, 'qty', qty)
  return {'created', order_id, stock_left - qty}
end

--[[
fs_create_sale
KEYS: sale, index
ARGV: sku, name, description, price_cents, stock, starts_ms, ends_ms, per_user_limit
Returns {'created'} or {'exists'} or {'invalid', field}.
]]
local function fs_create_sale(keys, args)
  local sale_k, index_k = keys[1], keys[2]
  local sku, name, description = args[1], args[2], args[3]
  local price = int_arg(args[4], 0, 100000000000)
  local stock = int_arg(args[5], 1, 100000000)
  local starts = int_arg(args[6], 0, 253402300799999)
  local ends = int_arg(args[7], 0, 253402300799999)
  local limit = int_arg(args[8], 1, MAX_QTY)
  if type(sku) ~= 'string' or not string.match(sku, '^[%w_%-]+$') or #sku > 64 then return {'invalid', 'sku'} end
  if price == nil then return {'invalid', 'price_cents'} end
  if stock == nil then return {'invalid', 'stock'} end
  if starts == nil then return {'invalid', 'starts_at'} end
  if ends == nil or ends <= starts then return {'invalid', 'ends_at'} end
  if limit == nil then return {'invalid', 'per_user_limit'} end
  if redis.call('EXISTS', sale_k) == 1 then
    return {'exists'}
  end
  redis.call('HSET', sale_k,
    'sku', sku, 'name', name, 'description', description, 'price_cents', price,
    'stock_total', stock, 'stock_left', stock, 'sold', 0, 'orders', 0, 'confirmed', 0,
    'starts_ms', starts, 'ends_ms', ends, 'per_user_limit', limit, 'created_ms', now_ms())
  redis.call('ZADD', index_k, starts, sku)
  return {'created'}
end

--[[
Confirmation (used by the worker): queued -> confirmed and XACK, in one
atomic step, for a batch of entries of ONE stream (one sale).

confirm_orders(sale_k, stream_k, group, order_keys, order_ids, entry_ids)
Per entry i, the result is 1 when it confirmed the order now, 0 when the order
was already confirmed (a duplicate delivery, also a second entry of the same
order in this batch), -1 when the order does not exist or does not match (the
entry is left pending, to be retried and eventually dead-lettered). Writes:
one HSET per order flipped, one HINCRBY sale confirmed n (none when n is 0),
one XACK of every entry whose order exists. Every key and entry id is checked
and every order read before the first write, so a malformed call (more than
MAX_CONFIRM_BATCH entries, keys of another sale, a bad entry id) is refused
with an error and changes nothing.
]]
local MAX_CONFIRM_BATCH = 512

local function confirm_orders(sale_k, stream_k, group, order_keys, order_ids, entry_ids)
  local n = #order_keys
  if n > MAX_CONFIRM_BATCH then
    return redis.error_reply('ERR fs_confirm_batch: more than ' .. MAX_CONFIRM_BATCH .. ' entries')
  end
  -- The order keys must be this sale's (same {sku} hash tag, same prefix).
  local base = string.match(sale_k, '^(.*:)sale$')
  if not base or stream_k ~= base .. 'stream' then
    return redis.error_reply('ERR fs_confirm_batch: sale and stream keys do not match')
  end
  local order_base = base .. 'order:'
  local results, flip, ack = {}, {}, {}
  local seen = {}
  for i = 1, n do
    local order_k, order_id, entry_id = order_keys[i], order_ids[i], entry_ids[i]
    if string.sub(order_k, 1, #order_base) ~= order_base then
      return redis.error_reply('ERR fs_confirm_batch: order key ' .. i .. ' is not of this sale')
    end
    if type(entry_id) ~= 'string' or not string.match(entry_id, '^%d+%-%d+$') then
      return redis.error_reply('ERR fs_confirm_batch: bad entry id at ' .. i)
    end
    local o = redis.call('HMGET', order_k, 'status', 'order_id')
    if not o[1] or o[2] ~= order_id then
      results[i] = -1
    else
      if o[1] == 'queued' and not seen[order_k] then
        results[i] = 1
        flip[#flip + 1] = order_k
      else
        results[i] = 0
      end
      seen[order_k] = true
      ack[#ack + 1] = entry_id
    end
  end
  local now = 0
  if #flip > 0 then
    now = now_ms()
    redis.call('HINCRBY', sale_k, 'confirmed', #flip)
  end
  if #ack > 0 then
    redis.call('XACK', stream_k, group, unpack(ack))
  end
  for _, order_k in ipairs(flip) do
    redis.call('HSET', order_k, 'status', 'confirmed', 'confirmed_ms', now)
  end
  return results
end

--[[
fs_confirm_batch (used by the worker): entries of one stream in one call.
KEYS: sale, stream, order_1 .. order_n   (n <= 512)
ARGV: group, order_id_1, entry_id_1, .. order_id_n, entry_id_n
Returns an array of n results (1 / 0 / -1, see confirm_orders), aligned
with the order keys.
]]
local function fs_confirm_batch(keys, args)
  local n = #keys - 2
  if n < 0 or #args ~= 1 + 2 * n then
    return redis.error_reply('ERR fs_confirm_batch: want KEYS sale, stream, orders and ARGV group, (order_id, entry_id) per order')
  end
  local order_keys, order_ids, entry_ids = {}, {}, {}
  for i = 1, n do
    order_keys[i] = keys[i + 2]
    order_ids[i] = args[2 * i]
    entry_ids[i] = args[2 * i + 1]
  end
  return confirm_orders(keys[1], keys[2], args[1], order_keys, order_ids, entry_ids)
end

--[[
fs_confirm: one entry (the single-entry case of fs_confirm_batch; kept for
tests and operators).
KEYS: order, sale, stream
ARGV: order_id, group, entry_id
Returns 1, 0 or -1 (see confirm_orders).
]]
local function fs_confirm(keys, args)
  local r = confirm_orders(keys[2], keys[3], args[2], {keys[1]}, {args[1]}, {args[3]})
  if type(r) ~= 'table' or r.err then
    return r
  end
  return r[1]
end

--[[
fs_dead_letter (used by the worker): moves one pending entry to the dead
letter stream with the reason, and acknowledges it, in one step.
KEYS: stream, dead
ARGV: group, entry_id, reason, deliveries, consumer
Returns 1, or 0 when the entry is no longer in the stream (it is acked).
]]
local function fs_dead_letter(keys, args)
  local stream_k, dead_k = keys[1], keys[2]
  local group, entry_id = args[1], args[2]
  local entry = redis.call('XRANGE', stream_k, entry_id, entry_id)
  local fields = {'original_id', entry_id, 'reason', args[3], 'deliveries', args[4], 'consumer', args[5]}
  local found = 0
  if entry[1] then
    found = 1
    local f = entry[1][2]
    for i = 1, #f, 2 do
      table.insert(fields, 'f:' .. f[i])
      table.insert(fields, f[i + 1])
    end
  end
  redis.call('XADD', dead_k, '*', unpack(fields))
  redis.call('XACK', stream_k, group, entry_id)
  return found
end

--[[
fs_audit (read-only): the sale's counters and a full consistency check.
KEYS: sale, units
Returns {stock_total, stock_left, sold, orders, buyers, confirmed, consistent(0/1), per_user_max}
or {} for an unknown sale.
]]
local function fs_audit(keys, args)
  local sale_k, units_k = keys[1], keys[2]
  local s = redis.call('HMGET', sale_k, 'stock_total', 'stock_left', 'sold', 'orders', 'confirmed', 'per_user_limit')
  if not s[1] then
    return {}
  end
  local total, left, sold, orders, confirmed, limit =
    tonumber(s[1]), tonumber(s[2]), tonumber(s[3]), tonumber(s[4]), tonumber(s[5]), tonumber(s[6])
  local flat = redis.call('HGETALL', units_k)
  local units_sum, buyers, max_held = 0, 0, 0
  for i = 2, #flat, 2 do
    local u = tonumber(flat[i])
    units_sum = units_sum + u
    buyers = buyers + 1
    if u > max_held then max_held = u end
  end
  local ok = left >= 0 and sold <= total and left + sold == total and units_sum == sold
    and max_held <= limit and confirmed <= orders and orders <= sold
  return {total, left, sold, orders, buyers, confirmed, ok and 1 or 0, max_held}
end

--[[
fs_rate: a token bucket (rate per second, burst = max(rate, 1)).
KEYS: bucket
ARGV: rate
Returns {1, 0} when allowed, {0, wait_ms} when not.
]]
local function fs_rate(keys, args)
  local rate = int_arg(args[1], 1, 1000000)
  if rate == nil then
    return {1, 0}
  end
  local burst = rate
  local now = now_ms()
  local b = redis.call('HMGET', keys[1], 'tokens', 'ts')
  local tokens = tonumber(b[1]) or burst
  local ts = tonumber(b[2]) or now
  if now > ts then
    tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
  end
  local allowed, wait = 0, 0
  if tokens >= 1 then
    tokens = tokens - 1
    allowed = 1
  else
    wait = math.ceil((1 - tokens) * 1000 / rate)
  end
  redis.call('HSET', keys[1], 'tokens', tostring(tokens), 'ts', now)
  redis.call('PEXPIRE', keys[1], math.ceil(burst * 1000 / rate) + 1000)
  return {allowed, wait}
end

redis.register_function('fs_rate', fs_rate)
redis.register_function{function_name = 'fs_version', callback = fs_version, flags = {'no-writes'}}
redis.register_function('fs_purchase', fs_purchase)
redis.register_function('fs_create_sale', fs_create_sale)
redis.register_function('fs_confirm', fs_confirm)
redis.register_function('fs_confirm_batch', fs_confirm_batch)
redis.register_function('fs_dead_letter', fs_dead_letter)
redis.register_function{function_name = 'fs_audit', callback = fs_audit, flags = {'no-writes'}}
