#!lua name=flashsale
--[[
The flashsale Function library. Loaded with FUNCTION LOAD REPLACE by every
process at start-up and checked after every master switch; Functions are
replicated and persisted (AOF), so a promoted replica already has them.

Every key of a sale carries the `{sku}` hash tag, so a sale's keys share a
slot. Key layout (prefix P is configurable, `fs` by default):
  P:{sku}:sale            hash: name, description, price_cents, stock_total,
                          stock_left, sold, orders, confirmed, starts_ms,
                          ends_ms, per_user_limit, created_ms, paused
                          (1 while paused, 0 or absent otherwise; from
                          version 9), currency (ISO 4217 code; absent:
                          USD) and image_url (absent: none) from version 11;
                          paid, expired, cancelled (orders) and returned
                          (units back in stock) from version 12; `sold` is
                          the units of live orders (not expired or cancelled)
  P:{sku}:units           hash: user id -> units held
  P:{sku}:first           hash: user id -> the user's first order id
  P:{sku}:uorders:<user>  list: the user's later order ids, oldest first (from
                          version 7 a shopper's first order is only in
                          `first`; lists written before also hold it, first)
  P:{sku}:idem:<user>:<k> string: order id created under Idempotency-Key k
  P:{sku}:order:<id>      hash: order_id, sku, user_id, qty, status,
                          created_ms, confirmed_ms, entry (the id of its
                          stream entry; from version 8), requeued_ms; from
                          version 12 amount_cents (price x qty at purchase),
                          pay_by_ms (with a payment window), paid_ms,
                          payment_id, expired_ms, cancelled_ms. status is
                          queued, confirmed, paid, expired or cancelled;
                          confirmed_ms is set once the worker recorded the
                          order (whatever its status by then)
  P:{sku}:payby           sorted set (version 12): order id -> pay_by_ms of
                          each order still waiting for its payment
  P:{sku}:stream          the sale's order stream (consumed by the worker)
  P:{sku}:dead            dead letters of that stream (original fields as f:<name>)
  P:sales                 sorted set of skus by start time (catalog index)

Why one file of this size: a Function library is one FUNCTION LOAD, so
every Function and the helpers they share live here, each with its
KEYS/ARGV/reply contract above it.

Results are arrays whose first element names the outcome; errors are never
raised for business outcomes, so the caller never has to parse error text.
Times come from the server (TIME), so every app instance sees one clock.
]]

-- An integer, raised with every change. A process loads the library only
-- over an older version, never over a newer one (a rolling deploy must not
-- flip it back and forth), so a new version keeps every function and its
-- KEYS/ARGV/reply shape of the versions before it, and only adds.
local VERSION = '13'
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
KEYS: sale, units, first, uorders, order, stream, idem ('' when no key; from
      version 13 also the sale key again, which is in the sale's slot, as
      every key of a call must be in a cluster)
      [, payby] (from version 12, with a payment window)
ARGV: user_id, qty, order_id [, payment window in ms] (from version 12;
      absent or 0: no payment step)
Returns one of:
  {'created', order_id, stock_left}
  {'exists', order_id}          -- this very order id exists (a retry of ours)
  {'already', order_id}         -- idempotency key reused, or user at the limit
  {'unknown_sku'} {'invalid_qty', limit, stock_left} {'not_started', starts_ms}
  {'ended'} {'sold_out'}
  {'paused'}                    -- from version 9: the sale is paused
An ended sale answers 'ended' even while paused; a paused sale answers
'paused' before it opens and before the stock checks, but after the
idempotency and limit checks, so a retry still gets its order id.
]]
local function fs_purchase(keys, args)
  local sale_k, units_k, first_k, uorders_k, order_k, stream_k, idem_k =
    keys[1], keys[2], keys[3], keys[4], keys[5], keys[6], keys[7]
  if idem_k == sale_k then
    idem_k = ''
  end
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
    'sold', 'orders', 'paused', 'price_cents')
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
  if now >= ends then
    return {'ended'}
  end
  if sale[7] == '1' then
    return {'paused'}
  end
  if now < starts then
    return {'not_started', starts}
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
    -- A shopper whose earlier orders all expired or were cancelled buys
    -- again: the new order becomes `first` (the one a 409 names), the old
    -- one moves to the list, so their orders stay listed.
    local before = redis.call('HGET', first_k, user)
    if before then
      redis.call('RPUSH', uorders_k, before)
    end
    redis.call('HSET', first_k, user, order_id)
  else
    redis.call('RPUSH', uorders_k, order_id)
  end
  -- The entry first, so the order records where it stands in the stream:
  -- the sweep (fs_requeue) needs that to tell a lost entry from a late one.
  local entry = redis.call('XADD', stream_k, '*', 'order_id', order_id, 'sku', sku, 'user_id', user, 'qty', qty)
  local amount = (tonumber(sale[8]) or 0) * qty
  local window = int_arg(args[4] or '0', 0, 31536000000) or 0
  if window > 0 and keys[8] then
    redis.call('HSET', order_k,
      'order_id', order_id, 'sku', sku, 'user_id', user, 'qty', qty,
      'status', 'queued', 'created_ms', now, 'entry', entry, 'amount_cents', amount,
      'pay_by_ms', now + window)
    redis.call('ZADD', keys[8], now + window, order_id)
  else
    redis.call('HSET', order_k,
      'order_id', order_id, 'sku', sku, 'user_id', user, 'qty', qty,
      'status', 'queued', 'created_ms', now, 'entry', entry, 'amount_cents', amount)
  end
  if idem_k ~= '' then
    redis.call('SET', idem_k, order_id)
  end
  return {'created', order_id, stock_left - qty}
end

-- Three upper-case letters (the caller checks the ISO 4217 table).
local function valid_currency(s)
  return type(s) == 'string' and string.match(s, '^%u%u%u$') ~= nil
end

-- '' (none) or at most 2048 bytes without spaces or control characters
-- (the caller checks it is an http(s) URL or a site path).
local function valid_image(s)
  return type(s) == 'string' and #s <= 2048 and not string.find(s, '[%s%c]')
end

--[[
fs_create_sale
KEYS: sale, index (from version 13 the index is optional: without it the
      caller adds the sale to the index itself, as it must in a cluster,
      where the index is in another slot than the sale)
ARGV: sku, name, description, price_cents, stock, starts_ms, ends_ms, per_user_limit
      [, currency, image_url] (from version 11; currency absent or '' is USD,
      image_url absent or '' is none; the caller validates both, the
      Function only bounds them)
Returns {'created'} or {'invalid', field} or {'exists', same}: same is 1
when the stored sale has exactly these fields (a retried create, e.g. after
a failover lost the reply: the caller answers as for 'created'), else 0.
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
  local currency, image = args[9] or '', args[10] or ''
  if currency == '' then currency = 'USD' end
  if not valid_currency(currency) then return {'invalid', 'currency'} end
  if not valid_image(image) then return {'invalid', 'image_url'} end
  if redis.call('EXISTS', sale_k) == 1 then
    local had = redis.call('HMGET', sale_k, 'name', 'description', 'price_cents', 'stock_total',
      'starts_ms', 'ends_ms', 'per_user_limit', 'currency', 'image_url')
    had[8] = had[8] or 'USD'
    had[9] = had[9] or ''
    -- Numbers compared as numbers: tostring() would print large ones in
    -- exponent form, which never equals the stored digits.
    local want = {name, description, price, stock, starts, ends, limit, currency, image}
    for i = 1, #want do
      local same
      if type(want[i]) == 'number' then
        same = tonumber(had[i]) == want[i]
      else
        same = had[i] == want[i]
      end
      if not same then
        return {'exists', 0}
      end
    end
    return {'exists', 1}
  end
  redis.call('HSET', sale_k,
    'sku', sku, 'name', name, 'description', description, 'price_cents', price,
    'stock_total', stock, 'stock_left', stock, 'sold', 0, 'orders', 0, 'confirmed', 0,
    'starts_ms', starts, 'ends_ms', ends, 'per_user_limit', limit, 'created_ms', now_ms(),
    'currency', currency)
  if image ~= '' then
    redis.call('HSET', sale_k, 'image_url', image)
  end
  if index_k then
    redis.call('ZADD', index_k, starts, sku)
  end
  return {'created'}
end

--[[
Lifecycle of a sale (from version 9): pause, resume, end. Each is one
atomic step on the master, so every instance's next purchase sees it.
KEYS: sale
ARGV: (none)
Returns {'ok'} (done now, or pausing a paused sale again),
{'unknown_sku'}, or {'conflict', reason}: reason 'ended' (the sale has
ended: nothing to pause, resume or end) or 'not_paused' (resume of a sale
that is not paused).
fs_end_sale sets ends_ms to the server's now and clears `paused`.
]]
local function lifecycle_of(sale_k)
  local s = redis.call('HMGET', sale_k, 'ends_ms', 'paused')
  if not s[1] then
    return nil
  end
  return {ended = now_ms() >= tonumber(s[1]), paused = s[2] == '1'}
end

local function fs_pause_sale(keys, args)
  local st = lifecycle_of(keys[1])
  if not st then return {'unknown_sku'} end
  if st.ended then return {'conflict', 'ended'} end
  redis.call('HSET', keys[1], 'paused', 1)
  return {'ok'}
end

local function fs_resume_sale(keys, args)
  local st = lifecycle_of(keys[1])
  if not st then return {'unknown_sku'} end
  if st.ended then return {'conflict', 'ended'} end
  if not st.paused then return {'conflict', 'not_paused'} end
  redis.call('HSET', keys[1], 'paused', 0)
  return {'ok'}
end

local function fs_end_sale(keys, args)
  local st = lifecycle_of(keys[1])
  if not st then return {'unknown_sku'} end
  if st.ended then return {'conflict', 'ended'} end
  redis.call('HSET', keys[1], 'ends_ms', now_ms(), 'paused', 0)
  return {'ok'}
end

--[[
fs_update_sale (from version 10): changes a sale that has not opened yet.
KEYS: sale, index (optional from version 13, as for fs_create_sale)
ARGV: field, value, field, value, ... with fields among name, description,
      price_cents, stock, starts_ms, ends_ms, per_user_limit, and from
      version 11 currency and image_url ('' removes the image); each at most
      once
Returns {'updated'}, {'unknown_sku'}, {'invalid', field} (also ends_at when
the resulting window is empty), or {'conflict', reason}: 'ended' (the sale
has ended), 'open' (it has opened, by the server's clock), 'sold' (units
are held: stock cannot change).
Every check comes before the first write. A new stock sets stock_total and
stock_left; a new start moves the sale in the index.
]]
local UPDATABLE = {name = true, description = true, price_cents = true, stock = true,
  starts_ms = true, ends_ms = true, per_user_limit = true, currency = true, image_url = true}

local function fs_update_sale(keys, args)
  local sale_k, index_k = keys[1], keys[2]
  if #args % 2 ~= 0 then
    return {'invalid', 'arguments'}
  end
  local want = {}
  for i = 1, #args, 2 do
    local f = args[i]
    if not UPDATABLE[f] or want[f] ~= nil then
      return {'invalid', tostring(f)}
    end
    want[f] = args[i + 1]
  end
  local s = redis.call('HMGET', sale_k, 'sku', 'starts_ms', 'ends_ms', 'sold', 'orders')
  if not s[1] then
    return {'unknown_sku'}
  end
  local now = now_ms()
  local starts, ends = tonumber(s[2]), tonumber(s[3])
  if now >= ends then return {'conflict', 'ended'} end
  if now >= starts then return {'conflict', 'open'} end

  local set = {}
  if want.name ~= nil then
    if #want.name == 0 or #want.name > 200 then return {'invalid', 'name'} end
    set[#set + 1] = 'name'; set[#set + 1] = want.name
  end
  if want.description ~= nil then
    if #want.description > 10000 then return {'invalid', 'description'} end
    set[#set + 1] = 'description'; set[#set + 1] = want.description
  end
  if want.price_cents ~= nil then
    local v = int_arg(want.price_cents, 0, 100000000000)
    if v == nil then return {'invalid', 'price_cents'} end
    set[#set + 1] = 'price_cents'; set[#set + 1] = v
  end
  if want.currency ~= nil then
    if not valid_currency(want.currency) then return {'invalid', 'currency'} end
    set[#set + 1] = 'currency'; set[#set + 1] = want.currency
  end
  local drop_image = false
  if want.image_url ~= nil then
    if not valid_image(want.image_url) then return {'invalid', 'image_url'} end
    if want.image_url == '' then
      drop_image = true
    else
      set[#set + 1] = 'image_url'; set[#set + 1] = want.image_url
    end
  end
  if want.per_user_limit ~= nil then
    local v = int_arg(want.per_user_limit, 1, MAX_QTY)
    if v == nil then return {'invalid', 'per_user_limit'} end
    set[#set + 1] = 'per_user_limit'; set[#set + 1] = v
  end
  local new_starts, new_ends = starts, ends
  if want.starts_ms ~= nil then
    new_starts = int_arg(want.starts_ms, 0, 253402300799999)
    if new_starts == nil then return {'invalid', 'starts_at'} end
  end
  if want.ends_ms ~= nil then
    new_ends = int_arg(want.ends_ms, 0, 253402300799999)
    if new_ends == nil then return {'invalid', 'ends_at'} end
  end
  if new_ends <= new_starts then return {'invalid', 'ends_at'} end
  if want.stock ~= nil then
    local v = int_arg(want.stock, 1, 100000000)
    if v == nil then return {'invalid', 'stock'} end
    if (tonumber(s[4]) or 0) ~= 0 or (tonumber(s[5]) or 0) ~= 0 then
      return {'conflict', 'sold'}
    end
    set[#set + 1] = 'stock_total'; set[#set + 1] = v
    set[#set + 1] = 'stock_left'; set[#set + 1] = v
  end
  set[#set + 1] = 'starts_ms'; set[#set + 1] = new_starts
  set[#set + 1] = 'ends_ms'; set[#set + 1] = new_ends
  redis.call('HSET', sale_k, unpack(set))
  if drop_image then
    redis.call('HDEL', sale_k, 'image_url')
  end
  if index_k then
    redis.call('ZADD', index_k, new_starts, s[1])
  end
  return {'updated'}
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
  local seen, flip_status = {}, {}
  for i = 1, n do
    local order_k, order_id, entry_id = order_keys[i], order_ids[i], entry_ids[i]
    if string.sub(order_k, 1, #order_base) ~= order_base then
      return redis.error_reply('ERR fs_confirm_batch: order key ' .. i .. ' is not of this sale')
    end
    if type(entry_id) ~= 'string' or not string.match(entry_id, '^%d+%-%d+$') then
      return redis.error_reply('ERR fs_confirm_batch: bad entry id at ' .. i)
    end
    local o = redis.call('HMGET', order_k, 'status', 'order_id', 'confirmed_ms')
    if not o[1] or o[2] ~= order_id then
      results[i] = -1
    else
      if not seen[order_k] and (o[1] == 'queued' or
          ((o[1] == 'paid' or o[1] == 'expired' or o[1] == 'cancelled') and not o[3])) then
        -- Queued: confirmed now. Paid, expired or cancelled before the
        -- worker got to it (version 12): recorded now, status kept.
        results[i] = 1
        flip[#flip + 1] = order_k
        flip_status[order_k] = o[1]
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
    if flip_status[order_k] == 'queued' then
      redis.call('HSET', order_k, 'status', 'confirmed', 'confirmed_ms', now)
    else
      redis.call('HSET', order_k, 'confirmed_ms', now)
    end
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

-- A stream entry id as {ms, seq}, or nil.
local function parse_id(id)
  if type(id) ~= 'string' then return nil end
  local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
  if not ms then return nil end
  return {tonumber(ms), tonumber(seq)}
end

local function id_less(a, b)
  return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2])
end

-- XINFO GROUPS of a stream as a list of {name=, pending=, last=}; RESP2
-- replies are flat arrays of field, value.
local function groups_of(stream_k)
  local out = {}
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream_k)) do
    local rec = {}
    for i = 1, #g, 2 do
      rec[g[i]] = g[i + 1]
    end
    out[#out + 1] = {name = rec['name'], pending = tonumber(rec['pending']) or 0,
      last = rec['last-delivered-id'], lag = rec['lag']}
  end
  return out
end

-- The base `P:{sku}:` of a sale's stream key, or nil.
local function stream_base(stream_k)
  return string.match(stream_k, '^(.*:)stream$')
end

--[[
fs_trim (used by the worker): trims a sale's stream on THIS node, below
the oldest entry that any consumer group here still needs (its oldest
pending entry, or the first it has not read) and below the oldest entry
whose order is not recorded by a worker yet here (`queued`, or from
version 12 paid, expired or cancelled without confirmed_ms). Every decision and the trim itself are
one atomic step on one node, so a worker can never decide on one master and
trim on another. Scans at most `max_scan` entries (1..100000).
KEYS: stream
ARGV: max_scan
Returns {trimmed, scanned}: entries removed, entries looked at (a caller
that sees scanned == max_scan calls again).
]]
local function fs_trim(keys, args)
  local stream_k = keys[1]
  local base = stream_base(stream_k)
  if not base then
    return redis.error_reply('ERR fs_trim: not a sale stream key')
  end
  local max_scan = int_arg(args[1], 1, 100000) or 1000
  if redis.call('EXISTS', stream_k) == 0 then
    return {0, 0}
  end
  local groups = groups_of(stream_k)
  if #groups == 0 then
    -- No group has read anything here (a new master that missed it): keep all.
    return {0, 0}
  end
  local need
  for _, g in ipairs(groups) do
    local n
    if g.pending > 0 then
      local p = redis.call('XPENDING', stream_k, g.name, '-', '+', 1)
      n = p[1] and parse_id(p[1][1])
    else
      n = parse_id(g.last)
      if n then n = {n[1], n[2] + 1} end
    end
    if not n then
      return {0, 0}
    end
    if not need or id_less(n, need) then
      need = n
    end
  end
  if need[1] == 0 and need[2] <= 1 then
    return {0, 0}
  end
  -- Below `need` every group has read and acknowledged the entry; still,
  -- an entry whose order is queued here is kept (the sweep re-queues it).
  local upto = need[1] .. '-' .. need[2]
  local scan = redis.call('XRANGE', stream_k, '-', '(' .. upto, 'COUNT', max_scan)
  local cut = #scan < max_scan and upto or nil
  for i, e in ipairs(scan) do
    local f, order_id = e[2], nil
    for j = 1, #f, 2 do
      if f[j] == 'order_id' then order_id = f[j + 1] end
    end
    local o = order_id and redis.call('HMGET', base .. 'order:' .. order_id, 'status', 'confirmed_ms')
    if o and o[1] and (o[1] == 'queued' or (o[1] ~= 'confirmed' and not o[2])) then
      cut = e[1]
      break
    end
    if i == #scan and not cut then
      local last = parse_id(e[1])
      cut = last[1] .. '-' .. (last[2] + 1)
    end
  end
  if not cut then
    return {0, #scan}
  end
  return {redis.call('XTRIM', stream_k, 'MINID', cut), #scan}
end

--[[
fs_lost (read-only, used by the worker's sweep): how many of a sale's
orders are neither confirmed nor carried by a live entry on THIS node:
orders - confirmed - (pending + lag of the group) - dead letters. Above 0
means some queued order has no entry a worker will ever read; -1 when the
group's lag is unknown here (after deletions inside the stream).
KEYS: sale, stream, dead
ARGV: group
]]
local function fs_lost(keys, args)
  local s = redis.call('HMGET', keys[1], 'orders', 'confirmed')
  if not s[1] then
    return 0
  end
  local open = (tonumber(s[1]) or 0) - (tonumber(s[2]) or 0)
  if open <= 0 then
    return 0
  end
  if redis.call('EXISTS', keys[2]) == 0 then
    return open
  end
  for _, g in ipairs(groups_of(keys[2])) do
    if g.name == args[1] then
      if type(g.lag) ~= 'number' then
        return -1
      end
      return open - g.pending - g.lag - redis.call('XLEN', keys[3])
    end
  end
  return open
end

--[[
fs_requeue (used by the worker's sweep): for each given order of ONE sale
that is still `queued` here, older than `older_than_ms`, and whose stream
entry no worker will deliver any more (the entry is gone, or the group read
it and it is no longer pending), adds a new entry and records it in the
order. Idempotent: an order whose entry is live is left alone.
KEYS: sale, stream, order_1 .. order_n   (n <= 512)
ARGV: group, older_than_ms
Returns {requeued, 'nogroup' or ''}.
]]
local function fs_requeue(keys, args)
  local sale_k, stream_k = keys[1], keys[2]
  local base = string.match(sale_k, '^(.*:)sale$')
  if not base or stream_k ~= base .. 'stream' or #keys - 2 > MAX_CONFIRM_BATCH then
    return redis.error_reply('ERR fs_requeue: want KEYS sale, stream and at most 512 orders of that sale')
  end
  local group, older = args[1], int_arg(args[2], 0, 86400000)
  if older == nil then
    return redis.error_reply('ERR fs_requeue: bad older_than_ms')
  end
  local last
  if redis.call('EXISTS', stream_k) == 1 then
    for _, g in ipairs(groups_of(stream_k)) do
      if g.name == group then last = parse_id(g.last) end
    end
  end
  if not last then
    -- The group is missing here: the worker recreates it from 0 and reads
    -- every entry, so nothing is lost yet.
    return {0, 'nogroup'}
  end
  local now = now_ms()
  local order_base = base .. 'order:'
  local n = 0
  for i = 3, #keys do
    local order_k = keys[i]
    if string.sub(order_k, 1, #order_base) ~= order_base then
      return redis.error_reply('ERR fs_requeue: order key ' .. (i - 2) .. ' is not of this sale')
    end
    local o = redis.call('HMGET', order_k, 'status', 'created_ms', 'entry', 'order_id', 'sku', 'user_id', 'qty',
      'confirmed_ms')
    local created = tonumber(o[2])
    -- Not recorded by a worker yet: queued, or (version 12) paid, expired
    -- or cancelled before a worker got to it.
    local unrecorded = o[1] == 'queued' or (o[1] and o[1] ~= 'confirmed' and not o[8])
    if unrecorded and created and created <= now - older and o[4] then
      local gone = true
      local e = parse_id(o[3])
      if e and #redis.call('XRANGE', stream_k, o[3], o[3]) > 0 then
        -- Still in the stream: live unless the group read it and it is no
        -- longer pending (acknowledged without its order being confirmed).
        gone = not id_less(last, e) and #redis.call('XPENDING', stream_k, group, o[3], o[3], 1) == 0
      end
      if gone then
        local id = redis.call('XADD', stream_k, '*', 'order_id', o[4], 'sku', o[5], 'user_id', o[6], 'qty', o[7])
        redis.call('HSET', order_k, 'entry', id, 'requeued_ms', now)
        n = n + 1
      end
    end
  end
  return {n, ''}
end

--[[
Payment, cancellation and expiry (from version 12). An order waiting for
its payment is in P:{sku}:payby, scored by its deadline. Of a payment, a
cancellation and an expiry of one order exactly one wins: each is one
atomic step here, and each first applies the deadline itself (an order past
its pay_by is expired by whichever call sees it first, so the deadline does
not depend on when a worker gets to it).

Returning an order's units (expiry or cancellation): stock_left += qty,
sold -= qty, returned += qty, the buyer's units -= qty, expired or
cancelled += 1, the order leaves payby, and an event entry (kind = expired
or cancelled) goes to the sale's stream, so the worker carries the change to
the ledger. A payment adds paid += 1 and an entry of kind paid.
]]
local function order_event(stream_k, kind, order_k, o)
  return redis.call('XADD', stream_k, '*', 'order_id', o.id, 'sku', o.sku, 'user_id', o.user,
    'qty', o.qty, 'kind', kind)
end

local function read_order(order_k)
  local f = redis.call('HMGET', order_k, 'status', 'order_id', 'sku', 'user_id', 'qty',
    'pay_by_ms', 'amount_cents', 'payment_id')
  if not f[1] then
    return nil
  end
  return {status = f[1], id = f[2], sku = f[3], user = f[4], qty = tonumber(f[5]) or 0,
    pay_by = tonumber(f[6]), amount = tonumber(f[7]) or 0, payment_id = f[8]}
end

local function return_units(sale_k, units_k, payby_k, stream_k, order_k, o, kind, now)
  redis.call('HINCRBY', sale_k, 'stock_left', o.qty)
  redis.call('HINCRBY', sale_k, 'sold', -o.qty)
  redis.call('HINCRBY', sale_k, 'returned', o.qty)
  redis.call('HINCRBY', sale_k, kind, 1)
  if redis.call('HINCRBY', units_k, o.user, -o.qty) <= 0 then
    redis.call('HDEL', units_k, o.user)
  end
  redis.call('ZREM', payby_k, o.id)
  redis.call('HSET', order_k, 'status', kind, kind .. '_ms', now)
  order_event(stream_k, kind, order_k, o)
  o.status = kind
end

-- Expires `o` when its deadline has passed and it is still unpaid.
local function lapse(sale_k, units_k, payby_k, stream_k, order_k, o, now)
  if o.pay_by and now >= o.pay_by and (o.status == 'queued' or o.status == 'confirmed') then
    return_units(sale_k, units_k, payby_k, stream_k, order_k, o, 'expired', now)
    return true
  end
  return false
end

local function keys_match(sale_k, order_k, units_k, payby_k, stream_k)
  local base = string.match(sale_k, '^(.*:)sale$')
  return base ~= nil and string.sub(order_k, 1, #base + 6) == base .. 'order:'
    and units_k == base .. 'units' and payby_k == base .. 'payby' and stream_k == base .. 'stream'
end

--[[
fs_pay: the payment provider's callback.
KEYS: sale, order, units, payby, stream
ARGV: payment_id, amount_cents
Returns {'paid', again} (again = 1 when this payment_id had already paid it),
{'unknown'}, {'late', status} (expired or cancelled: the shop refunds),
{'mismatch', amount_cents} (the order's amount), {'other_payment'} (paid by
another payment_id).
]]
local function fs_pay(keys, args)
  local sale_k, order_k, units_k, payby_k, stream_k = keys[1], keys[2], keys[3], keys[4], keys[5]
  if not keys_match(sale_k, order_k, units_k, payby_k, stream_k) then
    return redis.error_reply('ERR fs_pay: keys of different sales')
  end
  local payment_id, amount = args[1], int_arg(args[2], 0, 100000000000000)
  if type(payment_id) ~= 'string' or #payment_id == 0 or #payment_id > 128 then
    return redis.error_reply('ERR fs_pay: bad payment id')
  end
  local o = read_order(order_k)
  if not o then
    return {'unknown'}
  end
  if o.status == 'paid' then
    if o.payment_id == payment_id then
      return {'paid', 1}
    end
    return {'other_payment'}
  end
  local now = now_ms()
  lapse(sale_k, units_k, payby_k, stream_k, order_k, o, now)
  if o.status == 'expired' or o.status == 'cancelled' then
    return {'late', o.status}
  end
  if amount == nil or amount ~= o.amount then
    return {'mismatch', o.amount}
  end
  redis.call('HSET', order_k, 'status', 'paid', 'paid_ms', now, 'payment_id', payment_id)
  redis.call('HINCRBY', sale_k, 'paid', 1)
  redis.call('ZREM', payby_k, o.id)
  order_event(stream_k, 'paid', order_k, o)
  return {'paid', 0}
end

--[[
fs_cancel: the shopper cancels their order.
KEYS: sale, order, units, payby, stream
ARGV: user_id (the caller: only the order's own shopper may cancel it)
Returns {'cancelled', again} (again = 1 when it was cancelled before),
{'unknown'} (no such order, or another shopper's), {'not_cancellable', status}.
]]
local function fs_cancel(keys, args)
  local sale_k, order_k, units_k, payby_k, stream_k = keys[1], keys[2], keys[3], keys[4], keys[5]
  if not keys_match(sale_k, order_k, units_k, payby_k, stream_k) then
    return redis.error_reply('ERR fs_cancel: keys of different sales')
  end
  local o = read_order(order_k)
  if not o or o.user ~= args[1] then
    return {'unknown'}
  end
  if o.status == 'cancelled' then
    return {'cancelled', 1}
  end
  local now = now_ms()
  lapse(sale_k, units_k, payby_k, stream_k, order_k, o, now)
  if o.status ~= 'queued' and o.status ~= 'confirmed' then
    return {'not_cancellable', o.status}
  end
  return_units(sale_k, units_k, payby_k, stream_k, order_k, o, 'cancelled', now)
  return {'cancelled', 0}
end

--[[
fs_expire (used by the worker): expires the given orders whose deadline has
passed and that are still unpaid; skips the others (paid, cancelled, already
expired, or not due), removing from payby those no longer waiting.
KEYS: sale, units, payby, stream, order_1 .. order_n (n <= 512)
ARGV: order_id_1 .. order_id_n
Returns {expired, units_returned}.
]]
local function fs_expire(keys, args)
  local sale_k, units_k, payby_k, stream_k = keys[1], keys[2], keys[3], keys[4]
  local n = #keys - 4
  if n < 0 or n > MAX_CONFIRM_BATCH or #args ~= n then
    return redis.error_reply('ERR fs_expire: want KEYS sale, units, payby, stream, orders and one id per order')
  end
  local now = now_ms()
  local expired, returned = 0, 0
  for i = 1, n do
    local order_k = keys[i + 4]
    if not keys_match(sale_k, order_k, units_k, payby_k, stream_k) then
      return redis.error_reply('ERR fs_expire: order key ' .. i .. ' is not of this sale')
    end
    local o = read_order(order_k)
    if not o or o.id ~= args[i] then
      redis.call('ZREM', payby_k, args[i])
    elseif lapse(sale_k, units_k, payby_k, stream_k, order_k, o, now) then
      expired = expired + 1
      returned = returned + o.qty
    elseif o.status ~= 'queued' and o.status ~= 'confirmed' then
      redis.call('ZREM', payby_k, o.id)
    end
  end
  return {expired, returned}
end

--[[
fs_audit (read-only): the sale's counters and a full consistency check.
KEYS: sale, units
Returns {stock_total, stock_left, sold, orders, buyers, confirmed, consistent(0/1), per_user_max,
paid, expired, cancelled, returned} (the last four from version 12) or {} for an unknown sale.
`sold` counts units of live orders; an expired or cancelled order's units are
back in stock_left and counted in `returned`.
]]
local function fs_audit(keys, args)
  local sale_k, units_k = keys[1], keys[2]
  local s = redis.call('HMGET', sale_k, 'stock_total', 'stock_left', 'sold', 'orders', 'confirmed', 'per_user_limit',
    'paid', 'expired', 'cancelled', 'returned')
  if not s[1] then
    return {}
  end
  local total, left, sold, orders, confirmed, limit =
    tonumber(s[1]), tonumber(s[2]), tonumber(s[3]), tonumber(s[4]), tonumber(s[5]), tonumber(s[6])
  local paid, expired, cancelled, returned =
    tonumber(s[7]) or 0, tonumber(s[8]) or 0, tonumber(s[9]) or 0, tonumber(s[10]) or 0
  local live = orders - expired - cancelled
  local flat = redis.call('HGETALL', units_k)
  local units_sum, buyers, max_held = 0, 0, 0
  for i = 2, #flat, 2 do
    local u = tonumber(flat[i])
    units_sum = units_sum + u
    buyers = buyers + 1
    if u > max_held then max_held = u end
  end
  local ok = left >= 0 and sold <= total and left + sold == total and units_sum == sold
    and max_held <= limit and confirmed <= orders and live <= sold
    and paid + expired + cancelled <= orders and returned >= expired + cancelled
  return {total, left, sold, orders, buyers, confirmed, ok and 1 or 0, max_held,
    paid, expired, cancelled, returned}
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
redis.register_function('fs_pause_sale', fs_pause_sale)
redis.register_function('fs_resume_sale', fs_resume_sale)
redis.register_function('fs_end_sale', fs_end_sale)
redis.register_function('fs_update_sale', fs_update_sale)
redis.register_function('fs_confirm', fs_confirm)
redis.register_function('fs_confirm_batch', fs_confirm_batch)
redis.register_function('fs_dead_letter', fs_dead_letter)
redis.register_function{function_name = 'fs_audit', callback = fs_audit, flags = {'no-writes'}}
redis.register_function('fs_trim', fs_trim)
redis.register_function('fs_pay', fs_pay)
redis.register_function('fs_cancel', fs_cancel)
redis.register_function('fs_expire', fs_expire)
redis.register_function('fs_requeue', fs_requeue)
redis.register_function{function_name = 'fs_lost', callback = fs_lost, flags = {'no-writes'}}
