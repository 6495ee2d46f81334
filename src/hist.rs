//! Log2 histograms, filled in the kernel by `bpf/hist.bpf.h` (slot i: values whose floor(log2) is i, 0
//! and 1 in slot 0): printed exactly as libbpf-tools' `print_log2_hist()` (trace_helpers.c) prints them,
//! and as JSON buckets (`{"low":L,"high":H,"count":N}`, the same ranges). Every histogram tool uses these.

use std::collections::HashMap;
use std::fmt::Write as _;

/// The values slot `i` counts, `[low, high]`: 0 -> 1, 2 -> 3, 4 -> 7, ... (libbpf-tools' ranges).
pub fn log2_range(i: usize) -> (u64, u64) {
    let i = i.min(63) as u32;
    let high = if i == 63 {
        u64::MAX
    } else {
        (1u64 << (i + 1)) - 1
    };
    let low = 1u64 << i;
    if low == high { (0, high) } else { (low, high) }
}

/// The index of the last non-empty slot, None when every slot is empty.
fn last_used(vals: &[u64]) -> Option<usize> {
    vals.iter().rposition(|&v| v > 0)
}

/// `print_stars()`: `width` columns, stars in proportion to val_max.
fn push_stars(out: &mut String, val: u64, val_max: u64, width: usize) {
    let stars = if val_max == 0 {
        0
    } else {
        (val.min(val_max) as u128 * width as u128 / val_max as u128) as usize
    };
    out.extend(std::iter::repeat_n('*', stars));
    out.extend(std::iter::repeat_n(' ', width - stars));
    if val > val_max {
        out.push('+');
    }
}

/// The text `print_log2_hist(vals, n, val_type)` prints: nothing when every slot is empty, else the
/// `     <val_type>           : count    distribution` header and one line per slot up to the last
/// non-empty one, with a bar 40 stars wide (20 and wider ranges past slot 32, as libbpf-tools does).
pub fn log2_text(vals: &[u64], val_type: &str) -> String {
    let mut out = String::new();
    let Some(idx_max) = last_used(vals) else {
        return out;
    };
    let val_max = vals.iter().copied().max().unwrap_or(0);
    let narrow = idx_max <= 32;
    let (pad, type_w, width, stars) = if narrow {
        (5, 19, 10, 40)
    } else {
        (15, 29, 20, 20)
    };
    let _ = writeln!(
        out,
        "{:pad$}{val_type:<type_w$} : count    distribution",
        ""
    );
    for (i, &val) in vals.iter().enumerate().take(idx_max + 1) {
        let (low, high) = log2_range(i);
        let _ = write!(out, "{low:>width$} -> {high:<width$} : {val:<8} |");
        push_stars(&mut out, val, val_max, stars);
        out.push_str("|\n");
    }
    out
}

/// The JSON form: `[{"low":0,"high":1,"count":N},...]`, every slot up to the last non-empty one (the
/// rows the text shows); `[]` when every slot is empty.
pub fn log2_json(vals: &[u64]) -> String {
    let mut out = String::from("[");
    if let Some(idx_max) = last_used(vals) {
        for (i, &val) in vals.iter().enumerate().take(idx_max + 1) {
            let (low, high) = log2_range(i);
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{{\"low\":{low},\"high\":{high},\"count\":{val}}}");
        }
    }
    out.push(']');
    out
}

/// The bytes of a plain C struct from a skeleton (a histogram's map key), to tell histograms apart.
pub fn pod_bytes<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: a plain C struct from the skeleton, read as its bytes.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

/// Interval output of histograms the kernel only ever adds to (never cleared, so that what lands while
/// the map is read is in the next interval, not lost): each histogram's counters less what was printed
/// before. Keys are the histograms' map keys as bytes ([`pod_bytes`]).
#[derive(Default)]
pub struct Deltas {
    printed: HashMap<Vec<u8>, Vec<u64>>,
}

impl Deltas {
    /// `counters` (cumulative: slots and any totals) become what came since the last call for `key`.
    pub fn take(&mut self, key: Vec<u8>, counters: &mut [u64]) {
        if let Some(prev) = self.printed.insert(key, counters.to_vec()) {
            for (v, p) in counters.iter_mut().zip(prev) {
                *v = v.saturating_sub(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_like_libbpf_tools() {
        assert_eq!(log2_range(0), (0, 1));
        assert_eq!(log2_range(1), (2, 3));
        assert_eq!(log2_range(2), (4, 7));
        assert_eq!(log2_range(10), (1024, 2047));
        assert_eq!(log2_range(63), (1 << 63, u64::MAX));
    }

    /// Output of libbpf-tools' print_log2_hist(vals, 32, "backlog") for these values, byte for byte
    /// (the format strings of trace_helpers.c worked through by hand: `%*s%-*s` with 5 and 19, rows
    /// `%*lld -> %-*lld : %-8d |` with width 10, 40 stars for the largest count).
    #[test]
    fn text_like_print_log2_hist() {
        let mut vals = [0u64; 32];
        vals[0] = 4;
        vals[2] = 2;
        vals[3] = 1;
        let want = concat!(
            "     backlog             : count    distribution\n",
            "         0 -> 1          : 4        |****************************************|\n",
            "         2 -> 3          : 0        |                                        |\n",
            "         4 -> 7          : 2        |********************                    |\n",
            "         8 -> 15         : 1        |**********                              |\n",
        );
        assert_eq!(log2_text(&vals, "backlog"), want);
    }

    #[test]
    fn stars_round_down_and_counts_are_left_aligned() {
        let mut vals = [0u64; 32];
        vals[0] = 3;
        vals[1] = 123_456_789;
        let t = log2_text(&vals, "usecs");
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "     usecs               : count    distribution");
        // 3 * 40 / 123456789 = 0 stars
        assert_eq!(
            lines[1],
            "         0 -> 1          : 3        |                                        |"
        );
        // a count wider than 8 columns pushes the bar right, as printf's %-8d does
        assert_eq!(
            lines[2],
            "         2 -> 3          : 123456789 |****************************************|"
        );
    }

    #[test]
    fn empty_prints_nothing() {
        assert_eq!(log2_text(&[0; 32], "backlog"), "");
        assert_eq!(log2_json(&[0; 32]), "[]");
    }

    #[test]
    fn wide_ranges_past_slot_32() {
        let mut vals = [0u64; 40];
        vals[33] = 1;
        let t = log2_text(&vals, "nsecs");
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            format!("{:15}{:<29} : count    distribution", "", "nsecs")
        );
        assert_eq!(
            lines[34],
            format!(
                "{:>20} -> {:<20} : 1        |{}|",
                1u64 << 33,
                (1u64 << 34) - 1,
                "*".repeat(20)
            )
        );
        assert_eq!(lines.len(), 35);
    }

    #[test]
    fn deltas_per_key() {
        let mut d = Deltas::default();
        let mut a = [2u64, 0, 5];
        d.take(vec![1], &mut a);
        assert_eq!(a, [2, 0, 5], "the first time: everything");
        let mut a = [3u64, 1, 5];
        d.take(vec![1], &mut a);
        assert_eq!(a, [1, 1, 0]);
        let mut b = [4u64];
        d.take(vec![2], &mut b);
        assert_eq!(b, [4], "another key starts from nothing");
    }

    #[test]
    fn json_buckets() {
        let mut vals = [0u64; 32];
        vals[0] = 1;
        vals[2] = 5;
        assert_eq!(
            log2_json(&vals),
            "[{\"low\":0,\"high\":1,\"count\":1},{\"low\":2,\"high\":3,\"count\":0},{\"low\":4,\"high\":7,\"count\":5}]"
        );
    }
}
