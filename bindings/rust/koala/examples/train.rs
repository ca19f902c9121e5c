//! Least squares with KOALA from Rust: fit y = X w + b on generated data,
//! with KOALA-V, KOALA-M and KOALA++ in turn.
//!
//! 1024 samples, 16 features, a hidden linear rule plus noise; per-sample
//! loss l_j = (x_j.w + b - y_j)^2 / 2, minibatches of 64. Each iteration is
//! predict -> forward (l_j) -> loss = mean l_j, loss_var = mean l_j^2 ->
//! gradient of the mean -> update. Prints the full-data loss per epoch and
//! exits non-zero unless it fell with every method.
use koala::{Config, Method, Optimizer};

/// A small deterministic generator (no external crates): 64-bit LCG.
struct Lcg(u64);
impl Lcg {
    fn uniform(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32) / ((1u64 << 24) as f32) * 2.0 - 1.0
    }
}

const N: usize = 1024;
const D: usize = 16;
const BATCH: usize = 64;

fn full_loss(x: &[f32], y: &[f32], w: &[f32], b: f32) -> f64 {
    (0..N).map(|j| {
        let e = x[j * D..(j + 1) * D].iter().zip(w).map(|(a, b)| a * b).sum::<f32>() + b - y[j];
        0.5 * (e as f64) * (e as f64)
    }).sum::<f64>() / N as f64
}

fn main() -> Result<(), koala::Error> {
    let mut rng = Lcg(2022);
    let w_true: Vec<f32> = (0..D).map(|_| rng.uniform()).collect();
    let x: Vec<f32> = (0..N * D).map(|_| rng.uniform()).collect();
    let y: Vec<f32> = (0..N)
        .map(|j| x[j * D..(j + 1) * D].iter().zip(&w_true).map(|(a, b)| a * b).sum::<f32>() + 0.5 + 0.05 * rng.uniform())
        .collect();

    // lr 0.5: each step aims to remove half of the minibatch loss, so the
    // loss settles smoothly at the noise floor (about 4e-4 here).
    let methods = [
        ("KOALA-V", Config::new(Method::Vanilla).sigma(0.1).lr(0.5)),
        ("KOALA-M", Config::new(Method::Momentum).lr(0.5)),
        ("KOALA++", Config::new(Method::PlusPlus).lr(0.5)),
    ];
    let mut all_fell = true;
    for (name, config) in methods.iter() {
        let fell = train(name, config, &x, &y)?;
        all_fell = all_fell && fell;
    }
    if !all_fell {
        std::process::exit(1);
    }
    Ok(())
}

/// 10 epochs from w = 0, b = 0; true when the loss fell below 5% of the start.
fn train(name: &str, config: &Config, x: &[f32], y: &[f32]) -> Result<bool, koala::Error> {
    let mut w = vec![0.0f32; D];
    let mut b = vec![0.0f32; 1];
    let mut opt = Optimizer::host::<f32>(config, &[D, 1])?;
    let first = full_loss(x, y, &w, b[0]);
    println!("{}:\nepoch  0  loss {:.6}", name, first);
    let mut last = first;
    for epoch in 1..=10 {
        for start in (0..N).step_by(BATCH) {
            opt.predict(&mut [&mut w[..], &mut b[..]])?;
            let (mut loss, mut loss_var) = (0.0f64, 0.0f64);
            let mut gw = vec![0.0f32; D];
            let mut gb = vec![0.0f32; 1];
            for j in start..start + BATCH {
                let row = &x[j * D..(j + 1) * D];
                let e = row.iter().zip(&w).map(|(a, b)| a * b).sum::<f32>() + b[0] - y[j];
                let l = 0.5 * (e as f64) * (e as f64);
                loss += l;
                loss_var += l * l;
                for (g, xi) in gw.iter_mut().zip(row) {
                    *g += e * xi / BATCH as f32;
                }
                gb[0] += e / BATCH as f32;
            }
            loss /= BATCH as f64;
            loss_var /= BATCH as f64;
            opt.update(loss, loss_var, &mut [&mut w[..], &mut b[..]], &[&gw[..], &gb[..]])?;
        }
        last = full_loss(x, y, &w, b[0]);
        println!("epoch {:2}  loss {:.6}", epoch, last);
    }
    let info = opt.info()?;
    println!("{} steps, R {:.4e}", info.steps, info.r);
    if !(last < 0.05 * first) {
        eprintln!("FAILED: {}: the loss did not fall enough ({} -> {})", name, first, last);
        return Ok(false);
    }
    Ok(true)
}
