//! The kernel's packet drop reasons by name (`enum skb_drop_reason` in vmlinux BTF; the numbers differ
//! between kernels): tcpdrop's REASON column and `sockray serve`'s `reason` label.

use std::collections::HashMap;

/// The running kernel's drop reasons: number -> name without the `SKB_DROP_REASON_` (or `SKB_`) prefix,
/// as the kernel's own drop_reason strings.
#[derive(Debug, Default, Clone)]
pub struct Reasons(HashMap<u32, String>);

impl Reasons {
    /// From vmlinux BTF's `enum skb_drop_reason`; empty when the kernel has none (before 5.17).
    pub fn from_kernel() -> Reasons {
        use libbpf_rs::btf::{Btf, types::Enum};
        let Ok(btf) = Btf::from_vmlinux() else {
            return Reasons::default();
        };
        let Some(e) = btf.type_by_name::<Enum>("skb_drop_reason") else {
            return Reasons::default();
        };
        Reasons::from_members(
            e.iter()
                .filter_map(|m| Some((m.name?.to_string_lossy().into_owned(), m.value as u32))),
        )
    }

    pub fn from_members(members: impl Iterator<Item = (String, u32)>) -> Reasons {
        Reasons(
            members
                .filter(|(n, _)| !n.ends_with("_MAX") && n != "SKB_DROP_REASON_MAX")
                .map(|(n, v)| (v, short_name(&n).to_string()))
                .collect(),
        )
    }

    pub fn name(&self, reason: u32) -> Option<&str> {
        self.0.get(&reason).map(String::as_str)
    }

    /// The names, in the kernel's order.
    pub fn sorted_names(&self) -> Vec<&str> {
        let mut v: Vec<(u32, &str)> = self.0.iter().map(|(k, n)| (*k, n.as_str())).collect();
        v.sort();
        v.into_iter().map(|(_, n)| n).collect()
    }

    pub fn number(&self, name: &str) -> Option<u32> {
        let want = short_name(&name.trim().to_ascii_uppercase()).to_string();
        self.0.iter().find(|(_, n)| **n == want).map(|(v, _)| *v)
    }
}

pub fn short_name(n: &str) -> &str {
    n.strip_prefix("SKB_DROP_REASON_")
        .or_else(|| n.strip_prefix("SKB_"))
        .unwrap_or(n)
}
