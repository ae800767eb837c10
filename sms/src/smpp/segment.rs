//! Splitting a text into SMS parts for UCS-2 (data_coding 0x08): 140 octets per SMS, so 70
//! UTF-16 code units alone, or 67 after the 6-octet concatenation header. Cuts fall on
//! character boundaries: a surrogate pair (a character outside the BMP) is never split across
//! parts, since a handset cannot rejoin half a character.

/// Code units that fit one SMS without a header.
pub const SINGLE_UNITS: usize = 70;
/// Code units that fit one part after the concatenation header.
pub const PART_UNITS: usize = 67;
/// The concatenation header counts parts in one octet.
pub const MAX_PARTS: usize = 255;

/// Why a text cannot be sent as SMS.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SegmentError {
    /// Nothing to send.
    #[error("the text is empty")]
    Empty,
    /// More than [`MAX_PARTS`] parts.
    #[error("the text needs {0} parts; at most 255 can be concatenated")]
    TooLong(usize),
}

/// One SMS's payload: the UDH (empty for a single SMS) followed by big-endian UTF-16.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// 1-based position.
    pub seq: u8,
    /// The octets for `short_message`.
    pub payload: Vec<u8>,
}

/// The text as UTF-16 chunks, each at most [`SINGLE_UNITS`] (when alone) or [`PART_UNITS`].
pub fn chunks(text: &str) -> Vec<Vec<u16>> {
    let units: Vec<u16> = text.encode_utf16().collect();
    if units.len() <= SINGLE_UNITS {
        return vec![units];
    }
    let mut out = Vec::new();
    let mut rest = &units[..];
    while !rest.is_empty() {
        let mut n = rest.len().min(PART_UNITS);
        // A high surrogate as the last unit would leave its low half to the next part.
        if n < rest.len() && (0xD800..0xDC00).contains(&rest[n - 1]) {
            n -= 1;
        }
        out.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    out
}

/// How many SMS `text` takes.
pub fn count(text: &str) -> usize {
    let n = text.encode_utf16().count();
    if n <= SINGLE_UNITS {
        1
    } else {
        chunks(text).len()
    }
}

/// The parts for `short_message`, with a concatenation header (IEI 0x00, 8-bit `reference`)
/// when there is more than one; the caller sets esm_class 0x40 on those.
///
/// ```
/// use floodcmd_sms::smpp::segment::split;
///
/// let parts = split(&"汛".repeat(71), 7).unwrap();
/// assert_eq!(parts.len(), 2);
/// assert_eq!(&parts[1].payload[..6], &[0x05, 0x00, 0x03, 7, 2, 2]);
/// assert_eq!(split("短信", 7).unwrap()[0].payload, vec![0x77, 0xED, 0x4F, 0xE1]);
/// ```
pub fn split(text: &str, reference: u8) -> Result<Vec<Part>, SegmentError> {
    if text.is_empty() {
        return Err(SegmentError::Empty);
    }
    let chunks = chunks(text);
    let total = chunks.len();
    if total > MAX_PARTS {
        return Err(SegmentError::TooLong(total));
    }
    Ok(chunks
        .into_iter()
        .enumerate()
        .map(|(i, units)| {
            let seq = (i + 1) as u8;
            let mut payload = Vec::with_capacity(6 + units.len() * 2);
            if total > 1 {
                payload.extend_from_slice(&[0x05, 0x00, 0x03, reference, total as u8, seq]);
            }
            for u in units {
                payload.extend_from_slice(&u.to_be_bytes());
            }
            Part { seq, payload }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejoin(parts: &[Part]) -> String {
        let units: Vec<u16> = parts
            .iter()
            .flat_map(|p| {
                let body = if parts.len() > 1 {
                    &p.payload[6..]
                } else {
                    &p.payload[..]
                };
                body.chunks(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect::<Vec<_>>()
            })
            .collect();
        String::from_utf16(&units).expect("every part holds whole characters")
    }

    #[test]
    fn seventy_chinese_characters_fit_one_sms() {
        let t: String = "防".repeat(70);
        let parts = split(&t, 9).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].payload.len(), 140);
        assert_eq!(rejoin(&parts), t);
    }

    #[test]
    fn seventy_one_characters_take_two_parts_with_headers() {
        let t: String = "汛".repeat(71);
        let parts = split(&t, 42).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(&parts[0].payload[..6], &[5, 0, 3, 42, 2, 1]);
        assert_eq!(&parts[1].payload[..6], &[5, 0, 3, 42, 2, 2]);
        assert_eq!(parts[0].payload.len(), 6 + 67 * 2);
        assert_eq!(parts[1].payload.len(), 6 + 4 * 2);
        assert!(parts.iter().all(|p| p.payload.len() <= 140));
        assert_eq!(rejoin(&parts), t);
    }

    #[test]
    fn a_real_alert_rejoins_exactly() {
        let t = "【新城区防汛】红色预警 解放门下穿 积水32cm ↑2.1cm/分 请立即封闭并到岗 回复1确认。\
                 一点一策：封闭下穿通道两端，设置警示，启动泵站，疏导车辆绕行人民路，通知社区网格员到岗值守。";
        let parts = split(t, 1).unwrap();
        assert_eq!(parts.len(), count(t));
        assert!(parts.len() > 1);
        assert_eq!(rejoin(&parts), t);
    }

    #[test]
    fn surrogate_pairs_are_never_split() {
        // 66 BMP characters, then characters outside the BMP: the 67th unit would be a high
        // surrogate, so the first part stops at 66.
        let t = format!("{}{}", "水".repeat(66), "𠀀".repeat(40));
        let parts = split(&t, 3).unwrap();
        assert_eq!((parts[0].payload.len() - 6) / 2, 66);
        assert_eq!(rejoin(&parts), t);
        for p in &parts {
            let body = &p.payload[6..];
            let first = u16::from_be_bytes([body[0], body[1]]);
            assert!(
                !(0xDC00..0xE000).contains(&first),
                "part starts with a low surrogate"
            );
        }
        // Every position of a pair against the cut.
        for lead in 60..70 {
            let t = format!("{}{}", "a".repeat(lead), "😀".repeat(50));
            assert_eq!(rejoin(&split(&t, 0).unwrap()), t);
        }
    }

    #[test]
    fn limits() {
        assert_eq!(split("", 0), Err(SegmentError::Empty));
        let max = "字".repeat(67 * 255);
        assert_eq!(split(&max, 0).unwrap().len(), 255);
        let over = "字".repeat(67 * 255 + 1);
        assert_eq!(split(&over, 0), Err(SegmentError::TooLong(256)));
    }
}
