//! The eleven TCP states, their spellings, and per-state counters.

use std::fmt;
use std::str::FromStr;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

/// A TCP state as the kernel numbers it (`include/net/tcp_states.h`).
///
/// Request sockets (the kernel's internal NEW_SYN_RECV) are reported by the kernel as
/// SYN_RECV, and so are they here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
}

impl TcpState {
    /// All states in kernel order, the order every table and JSON object uses.
    pub const ALL: [TcpState; 11] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
    ];

    /// Maps the kernel's state number. 12 (NEW_SYN_RECV, a request socket) is folded into
    /// SYN_RECV as `/proc/net/tcp` and inet_diag both present it; anything else is `None`.
    pub fn from_kernel(code: u8) -> Option<TcpState> {
        match code {
            1..=11 => Some(TcpState::ALL[usize::from(code - 1)]),
            12 => Some(TcpState::SynRecv),
            _ => None,
        }
    }

    /// The kernel's number for this state.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Index 0..11 into per-state arrays.
    pub fn index(self) -> usize {
        usize::from(self.code() - 1)
    }

    /// The kernel's spelling, used in JSON: `CLOSE_WAIT`.
    pub fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
        }
    }

    /// The spelling `ss` uses in its `state` filter and output: `close-wait`.
    pub fn ss_name(self) -> &'static str {
        match self {
            TcpState::Established => "established",
            TcpState::SynSent => "syn-sent",
            TcpState::SynRecv => "syn-recv",
            TcpState::FinWait1 => "fin-wait-1",
            TcpState::FinWait2 => "fin-wait-2",
            TcpState::TimeWait => "time-wait",
            TcpState::Close => "closed",
            TcpState::CloseWait => "close-wait",
            TcpState::LastAck => "last-ack",
            TcpState::Listen => "listen",
            TcpState::Closing => "closing",
        }
    }

    /// The bits of `idiag_states` that select this state in an inet_diag request.
    /// SYN_RECV also selects NEW_SYN_RECV (12), where request sockets live since 4.4.
    pub fn diag_bits(self) -> u32 {
        let bit = 1u32 << self.code();
        if self == TcpState::SynRecv {
            bit | (1 << 12)
        } else {
            bit
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for TcpState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// A state name that matches none of the spellings we accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown TCP state '{0}' (expected one of: established, syn-sent, syn-recv, fin-wait-1, fin-wait-2, time-wait, closed, close-wait, last-ack, listen, closing)")]
pub struct UnknownState(pub String);

impl FromStr for TcpState {
    type Err = UnknownState;

    /// Accepts the kernel's spelling (`CLOSE_WAIT`), ss's (`close-wait`, `fin-wait-1`),
    /// netstat's (`FIN_WAIT1`, `SYN_RECV`) and mixes of case, `-` and `_`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm: String = s
            .trim()
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let state = match norm.as_str() {
            "established" | "estab" => TcpState::Established,
            "synsent" => TcpState::SynSent,
            "synrecv" | "synrcvd" | "synreceived" => TcpState::SynRecv,
            "finwait1" => TcpState::FinWait1,
            "finwait2" => TcpState::FinWait2,
            "timewait" => TcpState::TimeWait,
            "close" | "closed" | "unconn" => TcpState::Close,
            "closewait" => TcpState::CloseWait,
            "lastack" => TcpState::LastAck,
            "listen" | "listening" => TcpState::Listen,
            "closing" => TcpState::Closing,
            _ => return Err(UnknownState(s.to_string())),
        };
        Ok(state)
    }
}

/// A set of states, as the kernel's filter bitmask wants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StateSet(u16);

impl StateSet {
    pub const fn empty() -> StateSet {
        StateSet(0)
    }

    pub fn all() -> StateSet {
        TcpState::ALL.iter().copied().collect()
    }

    pub fn insert(&mut self, s: TcpState) {
        self.0 |= 1 << s.code();
    }

    pub fn contains(self, s: TcpState) -> bool {
        self.0 & (1 << s.code()) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn is_all(self) -> bool {
        self == StateSet::all()
    }

    /// The `idiag_states` mask for an inet_diag request.
    pub fn diag_mask(self) -> u32 {
        TcpState::ALL
            .iter()
            .filter(|s| self.contains(**s))
            .fold(0, |m, s| m | s.diag_bits())
    }

    pub fn iter(self) -> impl Iterator<Item = TcpState> {
        TcpState::ALL.into_iter().filter(move |s| self.contains(*s))
    }
}

impl FromIterator<TcpState> for StateSet {
    fn from_iter<I: IntoIterator<Item = TcpState>>(iter: I) -> Self {
        let mut set = StateSet::empty();
        for s in iter {
            set.insert(s);
        }
        set
    }
}

/// One counter per TCP state. Serialises as an object keyed by kernel state names,
/// every state present (zeros included), in kernel order, plus `"total"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StateCounts(pub [u64; 11]);

impl StateCounts {
    pub fn add(&mut self, s: TcpState) {
        self.0[s.index()] += 1;
    }

    pub fn get(&self, s: TcpState) -> u64 {
        self.0[s.index()]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn merge(&mut self, other: &StateCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += *b;
        }
    }
}

impl Serialize for StateCounts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(12))?;
        for st in TcpState::ALL {
            map.serialize_entry(st.name(), &self.get(st))?;
        }
        map.serialize_entry("total", &self.total())?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling_of_every_state() {
        for st in TcpState::ALL {
            assert_eq!(st.name().parse::<TcpState>(), Ok(st));
            assert_eq!(st.ss_name().parse::<TcpState>(), Ok(st));
            assert_eq!(st.name().to_lowercase().parse::<TcpState>(), Ok(st));
        }
        assert_eq!("close_wait".parse(), Ok(TcpState::CloseWait));
        assert_eq!("Close-Wait".parse(), Ok(TcpState::CloseWait));
        assert_eq!("FIN_WAIT1".parse(), Ok(TcpState::FinWait1));
        assert_eq!("fin-wait-2".parse(), Ok(TcpState::FinWait2));
    }

    #[test]
    fn rejects_unknown_state_naming_it() {
        let err = "half-open".parse::<TcpState>().unwrap_err();
        assert!(err.to_string().contains("'half-open'"));
    }

    #[test]
    fn kernel_codes_round_trip_and_new_syn_recv_folds() {
        for st in TcpState::ALL {
            assert_eq!(TcpState::from_kernel(st.code()), Some(st));
        }
        assert_eq!(TcpState::from_kernel(12), Some(TcpState::SynRecv));
        assert_eq!(TcpState::from_kernel(0), None);
        assert_eq!(TcpState::from_kernel(13), None);
    }

    #[test]
    fn diag_mask_selects_request_sockets_with_syn_recv() {
        let only_cw: StateSet = [TcpState::CloseWait].into_iter().collect();
        assert_eq!(only_cw.diag_mask(), 1 << 8);
        let syn: StateSet = [TcpState::SynRecv].into_iter().collect();
        assert_eq!(syn.diag_mask(), (1 << 3) | (1 << 12));
        assert_eq!(StateSet::all().diag_mask(), 0x1ffe);
    }

    #[test]
    fn counts_serialise_every_state_with_zeros() {
        let mut c = StateCounts::default();
        c.add(TcpState::TimeWait);
        let v = serde_json::to_value(c).expect("serialise");
        assert_eq!(v["TIME_WAIT"], 1);
        assert_eq!(v["CLOSE_WAIT"], 0);
        assert_eq!(v["total"], 1);
        assert_eq!(v.as_object().map(|o| o.len()), Some(12));
    }
}
