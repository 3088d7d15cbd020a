//! `spo theory` run as a user would: the stable JSON interface, figures, bad input.

use std::process::Command;

fn spo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_spo")).args(args).output().expect("spo runs")
}

#[test]
fn json_interface_from_the_issue() {
    let out = spo(&[
        "theory",
        "--rewards",
        "1,0.5,0,-0.5,-1,2",
        "--alpha",
        "0.1,0.5,1,2",
        "--beta",
        "0.1,1",
        "--ref",
        "0.3,0.3,0.1,0.1,0.1,0.1",
        "--json",
        "--samples",
        "0",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let spo_rows = v["spo"].as_array().unwrap();
    assert_eq!(spo_rows.len(), 4);
    for (row, alpha) in spo_rows.iter().zip([0.1, 0.5, 1.0, 2.0]) {
        assert_eq!(row["alpha"].as_f64(), Some(alpha));
        assert_eq!(row["pi"].as_array().unwrap().len(), 6);
        assert_eq!(row["target"].as_array().unwrap().len(), 6);
        assert!(row["max_abs_err"].as_f64().unwrap() <= 1e-6);
        assert!(row["iterations"].as_u64().is_some());
    }
    let dpo = v["dpo"].as_array().unwrap();
    assert_eq!(dpo.len(), 2);
    // DPO target at β = 1 is π_ref·e^r / Z, computed here independently
    let r = [1.0f64, 0.5, 0.0, -0.5, -1.0, 2.0];
    let p = [0.3, 0.3, 0.1, 0.1, 0.1, 0.1];
    let w: Vec<f64> = r.iter().zip(p).map(|(r, p)| p * r.exp()).collect();
    let z: f64 = w.iter().sum();
    for (i, t) in dpo[1]["target"].as_array().unwrap().iter().enumerate() {
        assert!((t.as_f64().unwrap() - w[i] / z).abs() < 1e-12);
        assert!((dpo[1]["pi"][i].as_f64().unwrap() - w[i] / z).abs() < 1e-6);
    }
    assert_eq!(dpo[0]["beta"].as_f64(), Some(0.1));
}

#[test]
fn beta_and_ref_may_be_omitted_and_table_is_default() {
    let out = spo(&["theory", "--rewards", "0,1,3", "--alpha", "0.5", "--samples", "0"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Theorem 1") && text.contains("Theorem 2") && text.contains("DPO"));
}

#[test]
fn plots_png_and_svg() {
    let dir = std::env::temp_dir().join(format!("spo-theory-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["fig.png", "fig.svg"] {
        let path = dir.join(name);
        let out = spo(&["theory", "--samples", "100,1000", "--plot", path.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let bytes = std::fs::read(&path).unwrap();
        if name.ends_with("png") {
            assert_eq!(&bytes[..4], b"\x89PNG");
        } else {
            assert!(String::from_utf8_lossy(&bytes).contains("<svg"));
        }
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_input_is_one_line_naming_flag_and_value_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["--rewards", "1,abc"], "abc"),
        (&["--alpha", "x"], "'x'"),
        (&["--alpha", "-0.5"], "-0.5"),
        (&["--beta", "-1"], "--beta"),
        (&["--beta", "0"], "--beta"),
        (&["--rewards", "1,inf"], "inf"),
        (&["--rewards", "1,NaN"], "NaN"),
        (&["--ref", "0.5,0.5"], "--ref"),
        (&["--ref", "0.5,0.5,0,0,0,0"], "--ref"),
        (&["--ref", "0.2,0.2,0.2,0.2,0.2,0.2"], "--ref"),
        (&["--rewards", "1"], "--rewards"),
        (&["--plot", "fig.gif"], "--plot"),
        (&["--gamma", "-1"], "--gamma"),
    ];
    for (args, needle) in cases {
        let mut full = vec!["theory"];
        full.extend_from_slice(args);
        let out = spo(&full);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: one line, got {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked") && !err.contains("backtrace"));
    }
}
