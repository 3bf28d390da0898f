//! Live read replicas: a primary (or a follower) serves its changes over HTTP; a
//! follower applies them to a readable copy of the database.
//!
//! - [`frame`]: the stream's wire format.
//! - [`apply`]: applies LTX files to the follower's database, one transaction each.
//! - [`position`]: the follower's position file.
//! - [`feed`]: one served database: its state folder, position and requests to its producer.
//! - [`sender`]: streams a feed to one follower.
//! - [`follow`]: the follower: stream or storage source → [`apply`].
//! - [`server`]: the HTTP endpoints (`/stream`, `/sync`, `/wait`, `/status`).
pub mod apply;
pub mod feed;
pub mod follow;
pub mod frame;
pub mod position;
pub mod sender;
pub mod server;
