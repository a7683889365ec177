//! The vision path of Llama 4 (docs/llama4.md §4): where an image goes (its tile canvas, its resized size,
//! and the tokens that stand for it in the prompt), its preprocessing into tiles, the tower's config, and
//! the tower itself, whose output replaces the `<|patch|>` embeddings of the prompt.

pub mod encoder;
pub mod input;
pub mod layout;
pub mod preprocess;
