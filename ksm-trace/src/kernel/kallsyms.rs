//! Addresses of named kernel symbols from /proc/kallsyms. aya's `kernel_symbols()` keys its map
//! by address, so of several symbols at one address only one survives — on Debian's 6.1,
//! `vmemmap_base` shares its address with `__start_ro_after_init` and is lost. This reads by
//! name.
use std::collections::BTreeMap;

/// The addresses of those of `names` that /proc/kallsyms lists with a non-zero address (zero:
/// hidden by kptr_restrict, or not root).
pub fn lookup(names: &[&str]) -> BTreeMap<String, u64> {
    std::fs::read_to_string("/proc/kallsyms")
        .map(|text| parse(&text, names))
        .unwrap_or_default()
}

fn parse(text: &str, names: &[&str]) -> BTreeMap<String, u64> {
    let mut found = BTreeMap::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(addr), Some(_kind), Some(name)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        // Module symbols carry a fourth field; ours are all in vmlinux.
        if fields.next().is_some() || !names.contains(&name) || found.contains_key(name) {
            continue;
        }
        if let Ok(addr @ 1..) = u64::from_str_radix(addr, 16) {
            found.insert(name.to_owned(), addr);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    #[test]
    fn symbols_sharing_an_address_are_all_found() {
        let text = "ffffffff82398470 D __sched_class_lowest\n\
                    ffffffff82398470 D vmemmap_base\n\
                    ffffffff82398470 D __start_ro_after_init\n\
                    ffffffff82b5cbe0 d ksm_scan\n\
                    0000000000000000 d hidden\n\
                    ffffffffc0000000 t ksm_scan\t[some_module]\n";
        let found = super::parse(text, &["vmemmap_base", "ksm_scan", "hidden", "absent"]);
        assert_eq!(found["vmemmap_base"], 0xffffffff82398470);
        assert_eq!(found["ksm_scan"], 0xffffffff82b5cbe0);
        assert_eq!(found.len(), 2);
    }
}
