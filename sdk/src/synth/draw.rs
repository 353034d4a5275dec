//! Rasterising the synthetic scenes: shapes, backgrounds, watermark-like
//! blocks, and the cheap visual descriptor stored as the embedding.

/// An RGB8 image, row-major.
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
    Hexagon,
    Diamond,
}

impl Shape {
    pub const ALL: [Shape; 6] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Star,
        Shape::Hexagon,
        Shape::Diamond,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
            Shape::Hexagon => "hexagon",
            Shape::Diamond => "diamond",
        }
    }

    pub fn zh(self) -> &'static str {
        match self {
            Shape::Circle => "圆形",
            Shape::Square => "正方形",
            Shape::Triangle => "三角形",
            Shape::Star => "五角星",
            Shape::Hexagon => "六边形",
            Shape::Diamond => "菱形",
        }
    }

    pub fn parse(name: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Is the point (u, v), in units of the shape's radius around its centre, inside?
    fn contains(self, u: f32, v: f32) -> bool {
        const S3: f32 = 1.732_050_8;
        match self {
            Shape::Circle => u * u + v * v <= 1.0,
            Shape::Square => u.abs() <= 0.78 && v.abs() <= 0.78,
            Shape::Diamond => u.abs() + v.abs() <= 1.0,
            Shape::Hexagon => {
                let (u, v) = (u.abs(), v.abs());
                v <= S3 / 2.0 && S3 * u + v <= S3
            }
            Shape::Triangle => {
                // Equilateral, pointing up, circumradius 1.
                v <= 0.5 && S3 * u.abs() <= v + 1.0
            }
            Shape::Star => {
                // Five points: inside if the radius at this angle is under the star's outline.
                let r = (u * u + v * v).sqrt();
                if r > 1.0 {
                    return false;
                }
                let a = v.atan2(u) + std::f32::consts::FRAC_PI_2;
                let sector = std::f32::consts::TAU / 5.0;
                let t = 1.0 - (a.rem_euclid(sector) / sector - 0.5).abs() * 2.0; // 0 at a point, 1 at a notch
                let inner = 0.42;
                // Straight edges between a point (radius 1) and a notch (radius `inner`).
                r <= 1.0 / (1.0 + t * (1.0 / inner - 1.0))
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Colour {
    pub name: &'static str,
    pub zh: &'static str,
    pub rgb: [u8; 3],
}

pub const COLOURS: [Colour; 12] = [
    Colour {
        name: "red",
        zh: "红色",
        rgb: [220, 40, 40],
    },
    Colour {
        name: "orange",
        zh: "橙色",
        rgb: [245, 140, 30],
    },
    Colour {
        name: "yellow",
        zh: "黄色",
        rgb: [240, 210, 40],
    },
    Colour {
        name: "green",
        zh: "绿色",
        rgb: [50, 170, 70],
    },
    Colour {
        name: "blue",
        zh: "蓝色",
        rgb: [40, 90, 210],
    },
    Colour {
        name: "purple",
        zh: "紫色",
        rgb: [130, 60, 180],
    },
    Colour {
        name: "pink",
        zh: "粉色",
        rgb: [240, 130, 180],
    },
    Colour {
        name: "white",
        zh: "白色",
        rgb: [245, 245, 245],
    },
    Colour {
        name: "black",
        zh: "黑色",
        rgb: [20, 20, 20],
    },
    Colour {
        name: "gray",
        zh: "灰色",
        rgb: [128, 128, 128],
    },
    Colour {
        name: "brown",
        zh: "棕色",
        rgb: [130, 80, 40],
    },
    Colour {
        name: "cyan",
        zh: "青色",
        rgb: [40, 200, 210],
    },
];

pub fn luminance(c: [u8; 3]) -> f32 {
    (0.299 * f32::from(c[0]) + 0.587 * f32::from(c[1]) + 0.114 * f32::from(c[2])) / 255.0
}

impl Canvas {
    /// A plain background with a gentle vertical gradient.
    pub fn background(width: usize, height: usize, c: [u8; 3]) -> Canvas {
        let mut rgb = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            let k = 1.0 + 0.08 * (y as f32 / height as f32 - 0.5);
            let px = c.map(|v| (f32::from(v) * k).clamp(0.0, 255.0) as u8);
            for _ in 0..width {
                rgb.extend_from_slice(&px);
            }
        }
        Canvas { width, height, rgb }
    }

    fn blend(&mut self, x: usize, y: usize, c: [u8; 3], alpha: f32) {
        let i = (y * self.width + x) * 3;
        for (px, &target) in self.rgb[i..i + 3].iter_mut().zip(&c) {
            let old = f32::from(*px);
            *px = (old + (f32::from(target) - old) * alpha).round() as u8;
        }
    }

    /// Draw `shape` of radius `r` centred at (cx, cy), 4× supersampled edges.
    pub fn shape(&mut self, shape: Shape, cx: f32, cy: f32, r: f32, c: [u8; 3]) {
        let x0 = (cx - r - 1.0).floor().max(0.0) as usize;
        let y0 = (cy - r - 1.0).floor().max(0.0) as usize;
        let x1 = ((cx + r + 1.0).ceil() as usize).min(self.width);
        let y1 = ((cy + r + 1.0).ceil() as usize).min(self.height);
        const OFF: [(f32, f32); 4] = [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)];
        for y in y0..y1 {
            for x in x0..x1 {
                let hits = OFF
                    .iter()
                    .filter(|(dx, dy)| {
                        shape.contains((x as f32 + dx - cx) / r, (y as f32 + dy - cy) / r)
                    })
                    .count();
                if hits > 0 {
                    self.blend(x, y, c, hits as f32 / 4.0);
                }
            }
        }
    }

    /// A watermark-like block: translucent light fill with diagonal stripes.
    pub fn watermark(&mut self, b: [usize; 4]) {
        for y in b[1]..b[3] {
            for x in b[0]..b[2] {
                let stripe = (x + y) % 9 < 3;
                let (c, a) = if stripe {
                    ([70, 70, 70], 0.45)
                } else {
                    ([250, 250, 250], 0.55)
                };
                self.blend(x, y, c, a);
            }
        }
    }

    /// A subtitle-like band: dark strip with rows of light "glyph" blocks.
    pub fn subtitle(&mut self, b: [usize; 4]) {
        for y in b[1]..b[3] {
            for x in b[0]..b[2] {
                let gy = (y - b[1]) * 4 / (b[3] - b[1]).max(1);
                let glyph = (1..3).contains(&gy) && (x / 5) % 3 != 2 && ((x * 7 + y) % 11) > 2;
                if glyph {
                    self.blend(x, y, [255, 255, 255], 0.95);
                } else {
                    self.blend(x, y, [10, 10, 10], 0.7);
                }
            }
        }
    }

    /// 64-dim descriptor: 4×4 grid of mean colours (48) and a 16-bin
    /// gradient-orientation histogram (16), L2-normalised.
    pub fn descriptor(&self) -> Vec<f32> {
        let (w, h) = (self.width, self.height);
        let mut grid = [0f32; 48];
        let mut counts = [0f32; 16];
        let mut orient = [0f32; 16];
        for y in 0..h {
            for x in 0..w {
                let i = (y * w + x) * 3;
                let cell = (y * 4 / h) * 4 + x * 4 / w;
                for k in 0..3 {
                    grid[cell * 3 + k] += f32::from(self.rgb[i + k]) / 255.0;
                }
                counts[cell] += 1.0;
                if x + 1 < w && y + 1 < h {
                    let l = |j: usize| luminance([self.rgb[j], self.rgb[j + 1], self.rgb[j + 2]]);
                    let gx = l(i + 3) - l(i);
                    let gy = l(i + w * 3) - l(i);
                    let mag = (gx * gx + gy * gy).sqrt();
                    if mag > 0.02 {
                        let a = gy.atan2(gx).rem_euclid(std::f32::consts::PI);
                        let bin = ((a / std::f32::consts::PI * 16.0) as usize).min(15);
                        orient[bin] += mag;
                    }
                }
            }
        }
        let mut v: Vec<f32> = grid
            .iter()
            .enumerate()
            .map(|(j, s)| s / counts[j / 3].max(1.0))
            .collect();
        let total: f32 = orient.iter().sum::<f32>().max(1e-6);
        v.extend(orient.iter().map(|o| o / total));
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_cover_plausible_areas() {
        // Fraction of the bounding square [-1,1]² covered, against geometry.
        let expect = [
            (Shape::Circle, std::f32::consts::PI / 4.0),
            (Shape::Square, 0.78 * 0.78),
            (Shape::Diamond, 0.5),
            (Shape::Hexagon, 3.0 * 1.732_050_8 / 8.0),
            (Shape::Triangle, 3.0 * 1.732_050_8 / 16.0),
        ];
        for (shape, area) in expect {
            let n = 400;
            let mut hit = 0;
            for i in 0..n {
                for j in 0..n {
                    let u = (i as f32 + 0.5) / n as f32 * 2.0 - 1.0;
                    let v = (j as f32 + 0.5) / n as f32 * 2.0 - 1.0;
                    hit += usize::from(shape.contains(u, v));
                }
            }
            let got = hit as f32 / (n * n) as f32;
            assert!((got - area).abs() < 0.01, "{shape:?}: {got} vs {area}");
        }
        // The star: its points reach radius 1, its notches do not.
        assert!(Shape::Star.contains(0.0, -0.98));
        assert!(!Shape::Star.contains(0.0, 0.9));
    }

    #[test]
    fn descriptor_is_unit_length_and_colour_sensitive() {
        let mut a = Canvas::background(64, 64, [200, 30, 30]);
        a.shape(Shape::Circle, 32.0, 32.0, 20.0, [30, 30, 200]);
        let b = Canvas::background(64, 64, [30, 200, 30]);
        let (da, db) = (a.descriptor(), b.descriptor());
        assert_eq!(da.len(), 64);
        let norm: f32 = da.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
        let dot: f32 = da.iter().zip(&db).map(|(x, y)| x * y).sum();
        assert!(dot < 0.9, "different scenes must differ: {dot}");
    }
}
