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

/// Sorts `blocks` and appends them to `runs` as runs of consecutive blocks (the first one
/// extends the last run when it continues it). Allocates nothing while `runs` has room.
pub fn append_runs(blocks: &mut [DataBlock], runs: &mut Vec<PassdownRun>) {
    blocks.sort_unstable();
    for &block in blocks.iter() {
        match runs.last_mut() {
            Some(run) if run.first.0 + run.count == block.0 => run.count += 1,
            _ => runs.push(PassdownRun { first: block, count: 1 }),
        }
    }
}

/// Sorts `runs` and joins the adjacent ones, in place: runs of distinct blocks appended a
/// slice at a time come out as one sort of all their blocks would make them.
pub fn coalesce_runs(runs: &mut Vec<PassdownRun>) {
    runs.sort_unstable_by_key(|run| run.first);
    let mut kept = 0;
    for next in 1..runs.len() {
        let run = runs[next];
        if runs[kept].first.0 + runs[kept].count == run.first.0 {
            runs[kept].count += run.count;
        } else {
            kept += 1;
            runs[kept] = run;
        }
    }
    runs.truncate(kept + 1);
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
        let mut runs = Vec::new();
        append_runs(&mut blocks, &mut runs);
        coalesce_runs(&mut runs);
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

    #[test]
    fn runs_appended_in_slices_equal_one_sort_of_the_whole() {
        // Blocks 0..64 shuffled (a multiplier prime to 64), minus a few, in slices of 5.
        let blocks: Vec<DataBlock> =
            (0..64u64).map(|i| DataBlock(i * 37 % 64)).filter(|b| b.0 % 13 != 7).collect();
        let mut whole = blocks.clone();
        let mut expected = Vec::new();
        append_runs(&mut whole, &mut expected);
        let mut sliced = Vec::new();
        for slice in blocks.chunks(5) {
            append_runs(&mut slice.to_vec(), &mut sliced);
        }
        assert!(sliced.len() > expected.len(), "slices alone leave runs apart");
        coalesce_runs(&mut sliced);
        assert_eq!(sliced, expected);
        let mut empty = Vec::new();
        coalesce_runs(&mut empty);
        assert!(empty.is_empty());
    }
}
