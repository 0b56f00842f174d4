//! Room-name patterns (`support-*`, `*-vip`, `*`), as the publish hook's
//! rooms and the history retention rules name rooms.

/// Whether `name` matches `pattern`, where `*` stands for any run of
/// characters (`support-*`, `*-vip`, `*`).
pub fn glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", "anything"));
        assert!(glob("support-*", "support-42"));
        assert!(!glob("support-*", "sales-1"));
        assert!(glob("*-vip", "room-vip") && !glob("*-vip", "vip-room"));
        assert!(glob("a*b*c", "a-x-b-y-c") && !glob("a*b*c", "a-c"));
        assert!(glob("exact", "exact") && !glob("exact", "exact2"));
        assert!(!glob("ab*ba", "aba"), "prefix and suffix may not overlap");
    }
}
