//! The passdown pipeline's pure parts (DESIGN.md "Discard with passdown"): turning the held
//! candidates of an unmap into contiguous runs and splitting runs at the device's limit. The
//! owner drives the six steps; this module has no state and runs on the owner's core.

use super::types::DataBlock;

/// Consecutive data blocks deallocated by one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassdownRun {
    pub first: DataBlock,
    pub count: u64,
}

/// Sorts `blocks` and returns them as runs of consecutive blocks.
pub fn runs_of(blocks: &mut [DataBlock]) -> Vec<PassdownRun> {
    blocks.sort_unstable();
    let mut runs: Vec<PassdownRun> = Vec::new();
    for &block in blocks.iter() {
        match runs.last_mut() {
            Some(run) if run.first.0 + run.count == block.0 => run.count += 1,
            _ => runs.push(PassdownRun { first: block, count: 1 }),
        }
    }
    runs
}

/// Calls `issue(first_block, block_count)` for pieces of `run` no longer than `max_lbas`
/// (in LBAs of `lbas_per_block` each; at least one block per piece).
pub fn split_run(
    run: PassdownRun,
    lbas_per_block: u64,
    max_lbas: u64,
    issue: &mut impl FnMut(u64, u64),
) {
    let blocks_per_piece = (max_lbas / lbas_per_block).max(1);
    let mut first = run.first.0;
    let end = run.first.0 + run.count;
    while first < end {
        let count = blocks_per_piece.min(end - first);
        issue(first, count);
        first += count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_splits() {
        let mut blocks = [DataBlock(5), DataBlock(3), DataBlock(4), DataBlock(9)];
        let runs = runs_of(&mut blocks);
        assert_eq!(
            runs,
            vec![
                PassdownRun { first: DataBlock(3), count: 3 },
                PassdownRun { first: DataBlock(9), count: 1 }
            ]
        );
        let mut pieces = Vec::new();
        split_run(runs[0], 8, 16, &mut |f, c| pieces.push((f, c)));
        assert_eq!(pieces, vec![(3, 2), (5, 1)]);
    }
}
