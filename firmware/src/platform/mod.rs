//! The board under the kiosk: health read from `/proc` and `/sys`
//! ([`board`]) and the update system's slots and artifacts ([`updates`]:
//! RAUC, Mender, SWUpdate).

pub mod board;
pub mod updates;
