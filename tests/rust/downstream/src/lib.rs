//! One KOALA++ run through the safe crate, shared by both binaries.
use koala::{Config, Method, Optimizer};

/// Fits w to a target with KOALA++ on f32 and returns (first, last) loss.
pub fn fit() -> Result<(f64, f64), koala::Error> {
    let target = [1.0f32, -2.0, 3.0, 0.5];
    let mut w = vec![0.0f32; 4];
    let mut opt = Optimizer::host::<f32>(&Config::new(Method::PlusPlus).threads(1), &[4])?;
    let loss_of = |w: &[f32]| w.iter().zip(&target).map(|(a, b)| 0.5 * ((a - b) as f64).powi(2)).sum::<f64>();
    let first = loss_of(&w);
    for _ in 0..30 {
        opt.predict(&mut [&mut w[..]])?;
        let g: Vec<f32> = w.iter().zip(&target).map(|(a, b)| a - b).collect();
        let loss = loss_of(&w);
        opt.update(loss, loss * loss, &mut [&mut w[..]], &[&g[..]])?;
    }
    Ok((first, loss_of(&w)))
}
