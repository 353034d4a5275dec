//! Tests of `tfidf`.
use super::*;

fn words(s: &[&str]) -> Vec<String> {
    s.iter().map(|w| (*w).to_owned()).collect()
}

fn opts(min_df: usize, max_df_fraction: f64, max_features: usize) -> TfIdfOptions {
    TfIdfOptions {
        min_df,
        max_df_fraction,
        max_features,
    }
}

#[test]
fn tokenize_english() {
    assert!(ENGLISH_STOP_WORDS.is_sorted() && CHINESE_STOP_WORDS.is_sorted());
    let t = tokenize("A red circle on a blue background.");
    assert_eq!(t, words(&["red", "circle", "blue", "background"]));
    // digits-only, one-letter and stop words go; mixed alphanumerics stay
    let t = tokenize("The 2 cats, 3D render of it: x-ray 1080p");
    assert_eq!(t, words(&["cats", "3d", "render", "ray", "1080p"]));
    assert_eq!(tokenize("ＲＥＤ　Ｃａｔ"), words(&["red", "cat"])); // full-width folded
}

#[test]
fn tokenize_chinese() {
    let t = tokenize("蓝色背景上的红色圆形");
    assert!(
        t.contains(&"背景".to_owned()) && t.contains(&"红色".to_owned()),
        "{t:?}"
    );
    assert!(!t.iter().any(|w| w == "的" || w == "上"), "{t:?}");
    assert_eq!(t, words(&["蓝色", "背景", "红色", "圆形"]));
    // CJK punctuation separates and is dropped
    assert_eq!(tokenize("一只猫，在草地上。"), words(&["猫", "草地"]));
}

#[test]
fn tokenize_mixed() {
    let t = tokenize("一辆红色的Tesla汽车 parked on 街道, photo by Li");
    let want = [
        "一辆", "红色", "tesla", "汽车", "parked", "街道", "photo", "li",
    ];
    assert_eq!(t, words(&want));
    assert!(tokenize("").is_empty());
    assert!(tokenize("。，！ ... 的 了 a the 42").is_empty());
}

fn corpus() -> Vec<Vec<String>> {
    let docs: [&[&str]; 3] = [
        &["cat", "sat", "mat"],
        &["cat", "dog"],
        &["dog", "dog", "bird"],
    ];
    docs.iter().map(|d| words(d)).collect()
}

#[test]
fn idf_matches_hand_computed_values() {
    let m = TfIdf::fit(&corpus(), &opts(1, 1.0, 100));
    assert_eq!(m.vocab, words(&["cat", "dog", "bird", "mat", "sat"])); // df desc, then term
    // ln(4/3) + 1 for df = 2, ln(4/2) + 1 for df = 1
    let expect = [1.287_682, 1.287_682, 1.693_147, 1.693_147, 1.693_147];
    for (got, want) in m.idf.iter().zip(expect) {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
    // doc 3: dog tf 2 -> (1 + ln 2) idf(dog) = 2.18023, bird -> 1.69315; normalised
    let v = m.transform(&corpus()[2]);
    assert_eq!((v.len(), v[0].0, v[1].0), (2, 1, 2));
    assert!((v[0].1 - 0.789_806_9).abs() < 1e-6 && (v[1].1 - 0.613_355_5).abs() < 1e-6);
    let v = m.transform(&corpus()[0]);
    assert_eq!(v.iter().map(|e| e.0).collect::<Vec<_>>(), [0, 3, 4]);
    assert!((v[0].1 - 0.473_629_6).abs() < 1e-6 && (v[1].1 - 0.622_766).abs() < 1e-6);
    assert_eq!(
        (m.term(2), m.term(5), m.id("dog")),
        (Some("bird"), None, Some(1))
    );
}

#[test]
fn df_limits_and_empty_documents() {
    let m = TfIdf::fit(&corpus(), &TfIdfOptions::default());
    assert_eq!(m.vocab, words(&["cat", "dog"])); // min_df = 2
    assert!(m.transform(&words(&["bird", "unknown"])).is_empty());
    // "x" is in 3 of 3 docs, more than 0.9
    let docs = vec![
        words(&["x", "a1"]),
        words(&["x", "a1"]),
        words(&["x", "b1"]),
    ];
    assert_eq!(
        TfIdf::fit(&docs, &opts(1, 0.9, 10)).vocab,
        words(&["a1", "b1"])
    );
    // max_features keeps the highest df
    assert_eq!(TfIdf::fit(&docs, &opts(1, 1.0, 1)).vocab, words(&["x"]));
}

#[test]
fn vectors_are_unit_length() {
    let texts = [
        "a red circle on blue",
        "red square, red circle",
        "蓝色背景上的红色圆形",
        "红色圆形",
    ];
    let docs: Vec<Vec<String>> = texts.iter().map(|s| tokenize(s)).collect();
    let m = TfIdf::fit(&docs, &opts(1, 0.9, 10));
    for d in &docs {
        let v = m.transform(d);
        assert!(!v.is_empty() && v.windows(2).all(|w| w[0].0 < w[1].0));
        let n: f32 = v.iter().map(|e| e.1 * e.1).sum();
        assert!((n - 1.0).abs() < 1e-5, "{n}");
    }
}

const CATS: [&str; 8] = [
    "cat", "kitten", "fluffy", "whiskers", "sleeping", "sofa", "tabby", "paws",
];
const CARS: [&str; 8] = [
    "汽车",
    "公路",
    "红色",
    "跑车",
    "轮胎",
    "城市",
    "停车场",
    "行驶",
];

/// 60 captions alternating English about cats and Chinese about cars.
fn two_topics() -> (Vec<Vec<(u32, f32)>>, TfIdf) {
    let mut rng = SplitMix64::new(7);
    let docs: Vec<Vec<String>> = (0..60)
        .map(|i| {
            let (pool, sep) = if i % 2 == 0 {
                (&CATS, " ")
            } else {
                (&CARS, "，")
            };
            let picked: Vec<&str> = (0..4).map(|_| pool[rng.below(8)]).collect();
            tokenize(&picked.join(sep))
        })
        .collect();
    let m = TfIdf::fit(&docs, &TfIdfOptions::default());
    (docs.iter().map(|d| m.transform(d)).collect(), m)
}

#[test]
fn separated_topics_give_pure_clusters() {
    let (vectors, m) = two_topics();
    let km = cluster(&vectors, m.dim(), 2, 1, 50);
    assert_eq!((km.k, km.empty, km.fitted_on), (2, 0, 60));
    let (even, odd) = (km.labels[0], km.labels[1]);
    assert_ne!(even, odd);
    for (i, &l) in km.labels.iter().enumerate() {
        assert_eq!(l, if i % 2 == 0 { even } else { odd }, "doc {i}");
    }
    assert_eq!(km.sizes(), vec![30, 30]);
    for c in &km.centroids {
        assert!((c.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-4);
    }
    let top = km.top_terms(&m, 3);
    assert!(top.iter().all(|t| t.len() == 3), "{top:?}");
    assert!(
        top[even as usize]
            .iter()
            .all(|t| CATS.contains(&t.as_str())),
        "{top:?}"
    );
    assert!(
        top[odd as usize].iter().all(|t| CARS.contains(&t.as_str())),
        "{top:?}"
    );
    assert_eq!(
        (
            km.assign(&vectors[0]),
            km.assign(&vectors[1]),
            km.assign(&[])
        ),
        (even, odd, 0)
    );
}

#[test]
fn empty_and_degenerate_inputs() {
    let (mut vectors, m) = two_topics();
    vectors.push(Vec::new());
    vectors.push(vec![(u32::MAX, 1.0), (0, f32::NAN)]); // nothing usable: ignored
    let km = cluster(&vectors, m.dim(), 2, 1, 50);
    assert_eq!(km.empty, 2);
    assert_eq!(km.labels[60..], [0, 0]);
    // fewer distinct directions than k
    let km = cluster(&vec![vec![(0u32, 1.0f32)]; 10], 4, 3, 9, 10);
    assert_eq!((km.k, km.labels.clone()), (1, vec![0; 10]));
    let km = cluster(&Vec::<Vec<(u32, f32)>>::new(), 4, 3, 9, 10);
    assert_eq!((km.k, km.labels.len(), km.fitted_on), (1, 0, 0));
    let km = cluster(&vec![Vec::new()], 0, 0, 9, 10);
    assert_eq!((km.k, km.empty, km.labels), (1, 1, vec![0]));
}

/// `n` unit vectors of ~10 terms from `topics` topics, each topic owning
/// `dim / topics` terms (80% of a document's terms, the rest noise), and
/// the true topic of each.
fn synthetic(n: usize, dim: usize, topics: usize, seed: u64) -> (Vec<Vec<(u32, f32)>>, Vec<u32>) {
    let mut rng = SplitMix64::new(seed);
    let span = dim / topics;
    let mut truth = Vec::with_capacity(n);
    let term = |topic: usize, rng: &mut SplitMix64| {
        let t = if rng.next_f64() < 0.8 {
            topic * span + rng.below(span)
        } else {
            rng.below(dim)
        };
        (t as u32, 0.5 + rng.next_f64() as f32)
    };
    let vectors = (0..n)
        .map(|_| {
            let topic = rng.below(topics);
            truth.push(topic as u32);
            let mut v: Vec<(u32, f32)> = (0..10).map(|_| term(topic, &mut rng)).collect();
            v.sort_unstable_by_key(|e| e.0);
            v.dedup_by_key(|e| e.0);
            let norm = v.iter().map(|e| e.1 * e.1).sum::<f32>().sqrt();
            v.iter().map(|&(t, w)| (t, w / norm)).collect()
        })
        .collect();
    (vectors, truth)
}

/// Fraction of vectors whose cluster's majority topic is their own.
fn purity(labels: &[u32], truth: &[u32], k: usize, topics: usize) -> f64 {
    let mut counts = vec![0usize; k * topics];
    for (&l, &t) in labels.iter().zip(truth) {
        counts[l as usize * topics + t as usize] += 1;
    }
    let majority: usize = counts.chunks(topics).filter_map(|c| c.iter().max()).sum();
    majority as f64 / labels.len() as f64
}

#[test]
fn deterministic_for_a_seed_and_any_thread_count() {
    let (vectors, truth) = synthetic(20_000, 512, 8, 3);
    let a = cluster_with_threads(&vectors, 512, 8, 42, 20, 1);
    assert_eq!(a, cluster_with_threads(&vectors, 512, 8, 42, 20, 3));
    assert_eq!(a, cluster(&vectors, 512, 8, 42, 20));
    // The compressed-rows form clusters identically.
    let mut csr = Csr::default();
    for v in &vectors {
        csr.push(v);
    }
    assert_eq!(csr.rows(), vectors.len());
    assert_eq!(a, cluster(&csr, 512, 8, 42, 20));
    let p = purity(&a.labels, &truth, a.k, 8);
    assert!(p > 0.95, "purity {p}, {} iterations", a.iterations);
}

#[test]
fn fits_on_at_most_fit_sample() {
    let (vectors, _) = synthetic(FIT_SAMPLE + 1000, 256, 4, 5);
    let km = cluster(&vectors, 256, 4, 1, 5);
    assert_eq!(
        (km.fitted_on, km.labels.len()),
        (FIT_SAMPLE, FIT_SAMPLE + 1000)
    );
    assert!((1..=5).contains(&km.iterations));
}

#[test]
fn splitmix_known_values() {
    // Reference outputs of SplitMix64 seeded with 0.
    let mut r = SplitMix64::new(0);
    assert_eq!(
        (r.next_u64(), r.next_u64()),
        (0xE220_A839_7B1D_CDAF, 0x6E78_9E6A_A1B9_65F4)
    );
}

/// 1,000,000 docs × ~10 nnz, dim 4096, k = 32; runs with GRANARY_SLOW_TESTS=1.
#[test]
fn million_docs() {
    if std::env::var("GRANARY_SLOW_TESTS").as_deref() != Ok("1") {
        return;
    }
    let (vectors, truth) = synthetic(1_000_000, 4096, 32, 11);
    let start = std::time::Instant::now();
    let km = cluster(&vectors, 4096, 32, 7, 30);
    let took = start.elapsed();
    let p = purity(&km.labels, &truth, km.k, 32);
    let (its, m, k) = (km.iterations, km.fitted_on, km.k);
    eprintln!("cluster 1M docs: {took:.2?}, {its} iterations on {m} docs, k = {k}, purity {p:.3}");
    assert_eq!(km.labels.len(), 1_000_000);
    assert!(p > 0.85, "purity {p}");
}
