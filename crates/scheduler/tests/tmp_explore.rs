#[test]
fn explore() {
    use ringlb_scheduler::maglev_raw;
    for &n in &[20u32, 50, 100, 200, 400] {
        for &m in &[65537u64, 131071, 262139, 524287] {
            let labels: Vec<String> = (0..n).map(|i| format!("10.0.{}.{}:7000", i / 256, i % 256)).collect();
            let l: Vec<&str> = labels.iter().map(|s| s.as_str()).collect();
            let mem: Vec<u32> = (0..n).collect();
            let w = vec![1u32; n as usize];
            let a = maglev_raw(&mem, &l, &w, m);
            let rm = (n / 2) as usize;
            let mut mem2 = mem.clone(); mem2.remove(rm);
            let mut l2 = l.clone(); l2.remove(rm);
            let b = maglev_raw(&mem2, &l2, &w[1..], m);
            let changed = a.iter().zip(b.iter()).filter(|(x, y)| x != y).count();
            println!("N={n} M={m} M/N={} disruption×N = {:.3}", m / n as u64, changed as f64 / m as f64 * n as f64);
        }
    }
}
