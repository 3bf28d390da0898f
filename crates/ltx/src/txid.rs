//! Transaction IDs.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// An LTX transaction ID. Displayed as 16 lowercase hex digits, the form used
/// in LTX file names.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct TxId(pub u64);

impl fmt::Display for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for TxId {
    type Err = Error;

    /// Accepts exactly 16 hex digits (either case), or otherwise a plain
    /// decimal number such as `167`. A 16-character string is always hex.
    fn from_str(s: &str) -> Result<Self, Error> {
        let invalid = || Error::InvalidTxId(s.to_owned());
        if s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return u64::from_str_radix(s, 16).map(TxId).map_err(|_| invalid());
        }
        if !s.is_empty() && s.len() != 16 && s.bytes().all(|b| b.is_ascii_digit()) {
            return s.parse::<u64>().map(TxId).map_err(|_| invalid());
        }
        Err(invalid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_forms() {
        assert_eq!("00000000000000a7".parse::<TxId>().unwrap(), TxId(167));
        assert_eq!("00000000000000A7".parse::<TxId>().unwrap(), TxId(167));
        assert_eq!("167".parse::<TxId>().unwrap(), TxId(167));
        assert_eq!("0000000000000010".parse::<TxId>().unwrap(), TxId(16));
        assert_eq!(TxId(167).to_string(), "00000000000000a7");
        for bad in [
            "",
            "+1",
            "-1",
            " 1",
            "a7",
            "0x10",
            "00000000000000g7",
            "000000000000000a7",
            "99999999999999999999",
        ] {
            assert!(
                matches!(bad.parse::<TxId>(), Err(Error::InvalidTxId(_))),
                "{bad}"
            );
        }
    }
}
