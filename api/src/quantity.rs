//! Kubernetes resource quantities (`100m`, `0.5`, `64Mi`, `1e3`, `2G`).

/// A quantity in thousandths of its unit (millicores for CPU, millibytes for
/// memory), rounded up as Kubernetes does; `None` when it does not parse.
pub fn parse(q: &str) -> Option<i128> {
    let q = q.trim();
    if q.is_empty() {
        return None;
    }
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    // `e`/`E` and digits is an exponent; `E` alone is exa, `Ei` exbi.
    let exponent = suffix
        .strip_prefix(['e', 'E'])
        .filter(|e| !e.is_empty() && *e != "i")
        .map(str::parse::<i32>);
    let (suffix, exponent) = match exponent {
        Some(e) => ("", e.ok()?),
        None => (suffix, 0),
    };
    let (mul_num, mul_den): (i128, i128) = match suffix {
        "" => (1, 1),
        "m" => (1, 1000),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        "Ei" => (1 << 60, 1),
        _ => return None,
    };
    // One sign at most.
    let negative = number.starts_with('-');
    let number = number.strip_prefix(['+', '-']).unwrap_or(number);
    if number.is_empty() || number.contains(['+', '-']) || number.matches('.').count() > 1 {
        return None;
    }
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let digits = format!("{int}{frac}");
    let mut value: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    let mut den: i128 = 10i128.checked_pow(frac.len() as u32)?;
    if exponent >= 0 {
        value = value.checked_mul(10i128.checked_pow(exponent as u32)?)?;
    } else {
        den = den.checked_mul(10i128.checked_pow((-exponent) as u32)?)?;
    }
    let num = value.checked_mul(mul_num)?.checked_mul(1000)?;
    let den = den.checked_mul(mul_den)?;
    let milli = (num + den - 1) / den;
    Some(if negative { -milli } else { milli })
}

/// A quantity in whole units (bytes for memory), rounded up as the kubelet
/// rounds a memory limit; `None` when it does not parse.
pub fn units(q: &str) -> Option<i128> {
    parse(q).map(|milli| milli.div_euclid(1000) + i128::from(milli.rem_euclid(1000) != 0))
}

#[cfg(test)]
mod tests {
    use super::{parse, units};

    #[test]
    fn quantities() {
        assert_eq!(parse("100m"), Some(100));
        assert_eq!(parse("0.5"), Some(500));
        assert_eq!(parse("2"), Some(2000));
        assert_eq!(parse("64Mi"), Some(64 * 1024 * 1024 * 1000));
        assert_eq!(parse("1G"), Some(1_000_000_000_000));
        assert_eq!(parse("1e3"), Some(1_000_000));
        assert_eq!(parse("1.5Gi"), Some(1536 * 1024 * 1024 * 1000));
        assert_eq!(parse("abc"), None);
        assert_eq!(parse("1Q"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("-1"), Some(-1000));
        assert_eq!(parse("+1"), Some(1000));
        assert_eq!(parse("+-1"), None);
        assert_eq!(parse("--1"), None);
        assert_eq!(parse("1-"), None);
        assert_eq!(parse("1E"), Some(1_000_000_000_000_000_000_000));
        assert_eq!(parse("2Ei"), Some((2 << 60) * 1000));
        assert_eq!(parse("1e"), None);
        assert_eq!(parse("1E-3"), Some(1));
        assert_eq!(units("64Mi"), Some(64 * 1024 * 1024));
        assert_eq!(units("1e3"), Some(1000));
        assert_eq!(units("1Pi"), Some(1 << 50));
        assert_eq!(units("500m"), Some(1));
        assert_eq!(units("1500m"), Some(2));
    }
}
