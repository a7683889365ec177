//! The vision path of Llama 4 (llama4-spec.md §4). So far: where an image goes (its tile canvas, its
//! resized size, and the tokens that stand for it in the prompt) its preprocessing into tiles,
//! and the tower's config.

pub mod config;
pub mod layout;
pub mod preprocess;
