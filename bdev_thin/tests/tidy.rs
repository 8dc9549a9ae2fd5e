//! Style as a test (TigerBeetle's `tidy`): fails on lines over 100 columns, leftover markers
//! (to-do, fix-me, debug macros),
//! `unsafe` outside the listed modules or without a `// SAFETY:` comment, modules without a
//! `//!` paragraph, and `unwrap` in the RPC and export layers.

use std::path::{Path, PathBuf};

/// The only files allowed `unsafe`, each with its reason in its `//!` paragraph.
const UNSAFE_ALLOWED: &[&str] = &[
    "bdev_thin/src/host/buffer.rs",
    "bdev_thin/src/backend/uring/ring.rs",
    "bdev_thin/src/sys.rs",
    "perf/tests/no_alloc.rs",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bdev_thin sits in the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if !matches!(name, "target" | ".git" | ".bench" | "fuzz") && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn tidy() {
    let root = workspace_root();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(files.len() > 10, "found the sources");
    let mut problems = Vec::new();
    for path in files {
        let relative = path.strip_prefix(&root).unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        if !text.starts_with("//!") {
            problems.push(format!("{relative}: no //! paragraph at the top"));
        }
        let in_layer_without_unwrap =
            relative.contains("/src/rpc/") || relative.contains("/src/export/");
        let mut in_tests = false;
        let lines: Vec<&str> = text.lines().collect();
        for (index, line) in lines.iter().enumerate() {
            let at = format!("{relative}:{}", index + 1);
            if line.chars().count() > 100 {
                problems.push(format!("{at}: line over 100 columns"));
            }
            let marker_todo = ["TO", "DO"].concat();
            let marker_fixme = ["FIX", "ME"].concat();
            let marker_dbg = ["dbg", "!("].concat();
            for marker in [&marker_todo, &marker_fixme, &marker_dbg] {
                if line.contains(marker.as_str()) {
                    problems.push(format!("{at}: {marker}"));
                }
            }
            if line.trim_start().starts_with("mod tests") || line.contains("#[cfg(test)]") {
                in_tests = true;
            }
            let code = line.split("//").next().unwrap_or("");
            let keyword = ["un", "safe"].concat();
            let flagged = [" {", " fn", " impl"]
                .iter()
                .any(|tail| code.contains(&format!("{keyword}{tail}")));
            if flagged {
                if !UNSAFE_ALLOWED.contains(&relative.as_str()) {
                    problems.push(format!("{at}: unsafe outside the listed modules"));
                }
                let window = &lines[index.saturating_sub(6)..=index];
                let documented =
                    window.iter().any(|l| l.contains("SAFETY:") || l.contains("# Safety"));
                if !documented {
                    problems.push(format!("{at}: unsafe without a // SAFETY: comment"));
                }
            }
            if in_layer_without_unwrap && !in_tests && code.contains(".unwrap()") {
                problems.push(format!("{at}: unwrap in the RPC/export layer"));
            }
        }
    }
    assert!(problems.is_empty(), "tidy found:\n{}", problems.join("\n"));
}
