//! The vision path of Llama 4 (llama4-spec.md §4). So far: where an image goes (its tile canvas, its
//! resized size, and the tokens that stand for it in the prompt) and its preprocessing into tiles.

pub mod layout;
pub mod preprocess;
