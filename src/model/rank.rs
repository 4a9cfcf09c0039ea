//! Top N plus the rest: the one ranking every report, metric and view uses, so a
//! "top 5" means the same thing everywhere (biggest first, ties by key).

/// Keys ranked by count, with what did not make the cut summed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranked<K> {
    /// The biggest `n`, biggest first, ties by key.
    pub top: Vec<(K, u64)>,
    /// The count of everything below the cut.
    pub rest: u64,
    /// How many keys are below the cut.
    pub rest_keys: usize,
}

/// Ranks `(key, count)` pairs; `n = usize::MAX` keeps them all.
pub fn top_n<K: Ord>(pairs: impl IntoIterator<Item = (K, u64)>, n: usize) -> Ranked<K> {
    let mut v = sorted_counts(pairs);
    let cut = v.split_off(n.min(v.len()));
    Ranked {
        top: v,
        rest: cut.iter().map(|(_, c)| c).sum(),
        rest_keys: cut.len(),
    }
}

/// (key, count) pairs, biggest count first, ties by key.
pub fn sorted_counts<K: Ord>(pairs: impl IntoIterator<Item = (K, u64)>) -> Vec<(K, u64)> {
    let mut v: Vec<(K, u64)> = pairs.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

/// Distinct values with how often each occurs, biggest count first, ties by value.
pub fn tally<K: Ord>(items: impl IntoIterator<Item = K>) -> Vec<(K, u64)> {
    let mut m: std::collections::BTreeMap<K, u64> = std::collections::BTreeMap::new();
    for k in items {
        *m.entry(k).or_default() += 1;
    }
    sorted_counts(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_n_keeps_the_biggest_and_sums_the_rest() {
        let r = top_n([("a", 1), ("b", 5), ("c", 5), ("d", 2)], 2);
        assert_eq!(r.top, vec![("b", 5), ("c", 5)]);
        assert_eq!((r.rest, r.rest_keys), (3, 2));
        let all = top_n([("a", 1)], usize::MAX);
        assert_eq!((all.top.len(), all.rest, all.rest_keys), (1, 0, 0));
        let none = top_n(Vec::<(u8, u64)>::new(), 3);
        assert!(none.top.is_empty());
    }

    #[test]
    fn tally_orders_by_count_then_value() {
        assert_eq!(tally([3, 1, 3, 2, 1, 3]), vec![(3, 3), (1, 2), (2, 1)]);
        assert_eq!(tally(Vec::<u16>::new()), vec![]);
    }
}
