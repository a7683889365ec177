//! Image rows in the forward pass (early fusion, docs/llama4.md §4.5): which rows replace which
//! `<|patch|>` embeddings, checked against the batch, split across the steps of a pass, and copied in.

use crate::backend::Backend;
use crate::error::{HerdError, Result};
use crate::kv::SeqId;

use super::steps;

/// The rows that replace one sequence's `<|patch|>` embeddings (early fusion, docs/llama4.md §4.5): the i-th
/// `token` among the sequence's new tokens in a forward pass takes the i-th row of `parts` taken in order.
/// The count must match exactly.
pub struct ImageRows<'a, B: Backend> {
    pub token: u32,
    pub parts: Vec<ImagePart<'a, B>>,
}

/// Rows `first..first + len` of a device buffer of rows of the model's width (as
/// [`crate::vision::encoder::VisionTower`] makes them).
pub struct ImagePart<'a, B: Backend> {
    pub buf: &'a B::Buffer,
    pub first: usize,
    pub len: usize,
}

impl<B: Backend> Clone for ImagePart<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend> Copy for ImagePart<'_, B> {}

impl<B: Backend> ImageRows<'_, B> {
    /// How many rows there are.
    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The rows after the first `n` (for tokens fed after a prefix that used those).
    pub fn skip(&self, mut n: usize) -> Self {
        let mut parts = Vec::new();
        for p in &self.parts {
            let k = n.min(p.len);
            n -= k;
            if k < p.len {
                parts.push(ImagePart { buf: p.buf, first: p.first + k, len: p.len - k });
            }
        }
        ImageRows { token: self.token, parts }
    }
    /// The first `n` rows.
    pub fn take(&self, mut n: usize) -> Self {
        let mut parts = Vec::new();
        for p in &self.parts {
            let k = n.min(p.len);
            n -= k;
            if k > 0 {
                parts.push(ImagePart { buf: p.buf, first: p.first, len: k });
            }
        }
        ImageRows { token: self.token, parts }
    }
}

/// One step entry's image rows: the sequence's rows, and how many of them earlier steps used.
pub(super) type StepImages<'a, 'b, B> = Option<(&'a ImageRows<'b, B>, usize)>;

/// Checks image rows against the batch before any work: one entry per sequence, and exactly as many rows
/// as the sequence has `<|patch|>` tokens.
pub(super) fn check_images<B: Backend>(batch: &[(SeqId, &[u32])], images: &[Option<&ImageRows<'_, B>>]) -> Result<()> {
    if images.is_empty() {
        return Ok(());
    }
    if images.len() != batch.len() {
        return Err(HerdError::Input(format!("{} image entries for a batch of {}", images.len(), batch.len())));
    }
    for (&(_, toks), img) in batch.iter().zip(images) {
        if let Some(img) = img {
            let n = toks.iter().filter(|&&t| t == img.token).count();
            if n != img.len() {
                return Err(HerdError::Input(format!(
                    "the prompt has {n} image patch tokens but its images give {} rows",
                    img.len()
                )));
            }
        }
    }
    Ok(())
}

/// Each piece entry's image rows and how many of them the sequence's earlier pieces used (`used` counts on).
pub(super) fn step_images<'a, 'b, B: Backend>(
    piece: &steps::Piece<'_>,
    images: &[Option<&'a ImageRows<'b, B>>],
    used: &mut [usize],
) -> Vec<StepImages<'a, 'b, B>> {
    if images.is_empty() {
        return Vec::new(); // a step without images (the step takes an empty list)
    }
    piece
        .iter()
        .map(|&(bi, toks)| {
            let img = images.get(bi).copied().flatten()?;
            let at = used[bi];
            used[bi] += toks.iter().filter(|&&t| t == img.token).count();
            Some((img, at))
        })
        .collect()
}

/// Copies image rows over the embeddings of the `<|patch|>` tokens among `toks` (rows `r0..` of `hidden`),
/// starting from row `used` of the images, one copy per run of patch tokens within one part.
pub(super) fn fuse_images<B: Backend>(
    be: &B,
    hidden: &B::Buffer,
    d: usize,
    r0: usize,
    toks: &[u32],
    img: &ImageRows<'_, B>,
    used: usize,
) -> Result<()> {
    let mut next = used; // the image row the next patch token takes
    let mut i = 0;
    while i < toks.len() {
        if toks[i] != img.token {
            i += 1;
            continue;
        }
        let run = toks[i..].iter().take_while(|&&t| t == img.token).count();
        let mut done = 0;
        while done < run {
            // The part holding image row `next`.
            let (mut part, mut start) = (0, 0);
            while part < img.parts.len() && start + img.parts[part].len <= next {
                start += img.parts[part].len;
                part += 1;
            }
            let Some(&ImagePart { buf, first, len: n }) = img.parts.get(part) else {
                return Err(HerdError::Input("more image patch tokens than image rows".into()));
            };
            let take = (run - done).min(start + n - next);
            be.copy(buf, (first + next - start) * d, hidden, (r0 + i + done) * d, take * d)?;
            next += take;
            done += take;
        }
        i += run;
    }
    Ok(())
}
