//! The Lua scripts that run inside Redis, one atomic call per key.
//!
//! Both read the clock with `TIME`, so every gateway instance shares
//! Redis's clock. A key holds its TAT (see [`super::super::gcra`]) as the
//! decimal number of nanoseconds since the Unix epoch. That number needs
//! 61 bits, past the 53 a Lua number holds exactly, so the scripts split it
//! into seconds and nanoseconds and compute relative to the current
//! second: every quantity they handle is then exact to the nanosecond as
//! long as a key's TAT is less than about 100 days ahead.
//!
//! A key expires (`PX`) when its TAT passes: an expired key is the same as
//! an idle, full one, so Redis memory holds only keys in use.

use redis::{Cmd, Script};

/// Shared by both scripts: the clock, and reading and writing a TAT
/// relative to the start of the current second (`sec`).
macro_rules! prelude {
    () => {
        r#"
local e = tonumber(ARGV[1])
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = tonumber(t[2]) * 1000
local tat = now
local v = redis.call('GET', KEYS[1])
if v then
  local n = string.len(v)
  local hi, lo = 0, tonumber(v)
  if n > 9 then
    hi = tonumber(string.sub(v, 1, n - 9))
    lo = tonumber(string.sub(v, n - 8))
  end
  if hi and lo then
    local r = (hi - sec) * 1e9 + lo
    if r > now then tat = r end
  end
end
local function store(r)
  if r <= now then
    redis.call('DEL', KEYS[1])
    return
  end
  local s = math.floor(r / 1e9)
  redis.call('SET', KEYS[1], string.format('%d%09d', sec + s, r - s * 1e9),
    'PX', math.ceil((r - now) / 1e6))
end
"#
    };
}

/// GCRA, the same arithmetic as `Gcra::decide`. ARGV: emission (ns),
/// burst, cost. Returns `{allowed, remaining, reset_ns, retry_after_ns}`.
const DECIDE: &str = concat!(
    prelude!(),
    r#"
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local new_tat = tat + e * cost
local allow_at = new_tat - e * burst
if allow_at > now then
  return {0, 0, tat - now, allow_at - now}
end
store(new_tat)
local d = now - allow_at
local remaining = math.floor(d / e)
if remaining * e > d then remaining = remaining - 1 end
return {1, remaining, new_tat - now, 0}
"#
);

/// Reconciliation: adds what an instance admitted on its own (ARGV[2]
/// requests' worth, never refused: they already passed) and returns the
/// key's TAT relative to now, `{tat_ns - now_ns}`.
const SYNC: &str = concat!(
    prelude!(),
    r#"
local cost = tonumber(ARGV[2])
if cost > 0 then
  tat = tat + e * cost
  store(tat)
end
return {tat - now}
"#
);

/// A script: its source (for `EVAL` when Redis does not have it cached) and
/// its SHA1 (for `EVALSHA`).
pub(super) struct Lua {
    source: &'static str,
    hash: String,
}

impl Lua {
    fn new(source: &'static str) -> Self {
        Self {
            source,
            hash: Script::new(source).get_hash().to_owned(),
        }
    }

    /// The GCRA decision script.
    pub(super) fn decide() -> Self {
        Self::new(DECIDE)
    }

    /// The reconciliation script.
    pub(super) fn sync() -> Self {
        Self::new(SYNC)
    }

    /// `EVALSHA` of the script on `key` with `args`.
    pub(super) fn evalsha(&self, key: &[u8], args: &[u64]) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.hash).arg(1).arg(key).arg(args);
        cmd
    }

    /// `EVAL` of the script's source, for a server that answered
    /// `NOSCRIPT` (restarted, or flushed its script cache); it also caches
    /// the script there for the next `EVALSHA`.
    pub(super) fn eval(&self, key: &[u8], args: &[u64]) -> Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(self.source).arg(1).arg(key).arg(args);
        cmd
    }
}
