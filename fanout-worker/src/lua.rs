//! Lua shared by the worker's scripts.

/// Defines `id_cmp(a, b)`: compares two stream entry ids (`<ms>-<seq>`)
/// numerically, returning -1, 0 or 1. Prepended to the scripts that order
/// entries (persistence's replay check, the stream trim).
pub(crate) const STREAM_ID_CMP: &str = r#"
local function id_cmp(a, b)
  local am, as = string.match(a, "^(%d+)-(%d+)$")
  local bm, bs = string.match(b, "^(%d+)-(%d+)$")
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  if am ~= bm then return am < bm and -1 or 1 end
  if as ~= bs then return as < bs and -1 or 1 end
  return 0
end
"#;

/// `prelude` followed by `body`, as one script's source.
pub(crate) fn with_prelude(prelude: &str, body: &str) -> String {
    format!("{prelude}{body}")
}
