//! What outlives a pass besides the trees: the text format of a tree's entries (`text`, shared by
//! version manifests and the two-way archive) and the two-way archive itself (`archive`).

pub mod archive;
pub mod text;
