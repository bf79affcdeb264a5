//! Incident rows a station's prediction service is sent (issue 15
//! groundwork for `POST /incidents`): LAPD-schema rows as CSV (with the
//! export's header) or JSON (one object, or an array of objects, keyed by
//! the export's column names), cleaned by the same loader as the city's
//! files. A batch is taken whole or refused whole: one bad row refuses it,
//! naming the row and the field, so the store is never half-written by a
//! request.

use fedcrime_data::schema::Column;
use fedcrime_data::{load_reader, Incident};

/// A request body that cannot be taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IngestError {
    /// The content type is neither CSV nor JSON.
    #[error("content type {0:?}: send text/csv or application/json")]
    ContentType(String),
    /// The body is not valid JSON of the expected shape.
    #[error("JSON body: {0}")]
    Json(String),
    /// A JSON row names a column the export does not have.
    #[error("row {row}: unknown field {field:?} (expected the export's column names, e.g. \"DR_NO\", \"DATE OCC\", \"AREA\")")]
    UnknownField {
        /// The 1-based row.
        row: usize,
        /// The field.
        field: String,
    },
    /// A row was dropped by cleaning.
    #[error("row {row}: field {field:?} = {value:?}: {reason}")]
    BadRow {
        /// The 1-based data row (the header not counted).
        row: u64,
        /// The export's column.
        field: String,
        /// The value (trimmed, at most 60 characters).
        value: String,
        /// Why the row cannot be used.
        reason: String,
    },
    /// The CSV could not be read at all (no header, wrong columns).
    #[error("CSV body: {0}")]
    Csv(String),
    /// The body holds no row.
    #[error("the body holds no incident")]
    Empty,
}

/// The incidents of a request body of `content_type` (parameters such as
/// `; charset=utf-8` ignored), and how many rows repeated an earlier row's
/// `DR_NO` in the same body (kept once).
pub fn parse_rows(body: &[u8], content_type: &str) -> Result<(Vec<Incident>, usize), IngestError> {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "text/csv" | "application/csv" => parse_csv(body),
        "application/json" => parse_json(body),
        _ => Err(IngestError::ContentType(content_type.to_string())),
    }
}

fn parse_csv(body: &[u8]) -> Result<(Vec<Incident>, usize), IngestError> {
    let loaded = load_reader(body, "request body").map_err(|e| IngestError::Csv(e.to_string()))?;
    if let Some((reason, first)) = loaded
        .report
        .first_dropped
        .iter()
        .min_by_key(|(_, d)| d.line)
    {
        return Err(IngestError::BadRow {
            // Line 1 is the header.
            row: first.line.saturating_sub(1),
            field: first.column.clone(),
            value: first.value.clone(),
            reason: reason.replace('_', " "),
        });
    }
    if loaded.incidents.is_empty() {
        return Err(IngestError::Empty);
    }
    // Every other dropped row refused the body above: the rest repeated a DR_NO.
    let repeated = (loaded.report.rows_read as usize).saturating_sub(loaded.incidents.len());
    Ok((loaded.incidents, repeated))
}

/// A CSV field, quoted when it must be.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn parse_json(body: &[u8]) -> Result<(Vec<Incident>, usize), IngestError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| IngestError::Json(e.to_string()))?;
    let rows = match value {
        serde_json::Value::Array(rows) => rows,
        obj @ serde_json::Value::Object(_) => vec![obj],
        _ => {
            return Err(IngestError::Json(
                "expected an object or an array of objects".into(),
            ))
        }
    };
    if rows.is_empty() {
        return Err(IngestError::Empty);
    }
    let columns: Vec<&'static str> = Column::ALL.iter().map(|c| c.name()).collect();
    let mut csv = columns.join(",");
    csv.push('\n');
    for (i, row) in rows.iter().enumerate() {
        let serde_json::Value::Object(fields) = row else {
            return Err(IngestError::Json(format!("row {} is not an object", i + 1)));
        };
        if let Some(unknown) = fields.keys().find(|k| !columns.contains(&k.as_str())) {
            return Err(IngestError::UnknownField {
                row: i + 1,
                field: unknown.clone(),
            });
        }
        let cells: Vec<String> = columns
            .iter()
            .map(|c| match fields.get(*c) {
                None | Some(serde_json::Value::Null) => String::new(),
                Some(serde_json::Value::String(s)) => csv_field(s),
                Some(other) => csv_field(&other.to_string()),
            })
            .collect();
        csv.push_str(&cells.join(","));
        csv.push('\n');
    }
    parse_csv(csv.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "DR_NO,Date Rptd,DATE OCC,TIME OCC,AREA,AREA NAME,Rpt Dist No,Part 1-2,Crm Cd,Crm Cd Desc,Mocodes,Vict Age,Vict Sex,Vict Descent,Premis Cd,Premis Desc,Weapon Used Cd,Weapon Desc,Status,Status Desc,Crm Cd 1,Crm Cd 2,Crm Cd 3,Crm Cd 4,LOCATION,Cross Street,LAT,LON";
    const ROW: &str = "240104567,02/03/2024 12:00:00 AM,02/02/2024 12:00:00 AM,2130,01,Central,0111,1,624,BATTERY - SIMPLE ASSAULT,0416,32,M,H,102,SIDEWALK,400,STRONG-ARM,IC,Invest Cont,624,,,,\"700 S  BROADWAY\",,34.0452,-118.2534";

    #[test]
    fn csv_rows_with_the_exports_header_are_taken() {
        let body = format!("{HEADER}\n{ROW}\n");
        let (rows, repeated) = parse_rows(body.as_bytes(), "text/csv; charset=utf-8").unwrap();
        assert_eq!(repeated, 0);
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].dr_no, rows[0].area, rows[0].minute_of_day),
            (240104567, 1, 21 * 60 + 30)
        );
    }

    #[test]
    fn json_rows_become_the_same_incidents() {
        let csv = parse_rows(format!("{HEADER}\n{ROW}\n").as_bytes(), "text/csv").unwrap();
        let twice = parse_rows(format!("{HEADER}\n{ROW}\n{ROW}\n").as_bytes(), "text/csv").unwrap();
        assert_eq!(
            twice,
            (csv.0.clone(), 1),
            "a repeated row is kept once and counted"
        );
        let json = r#"[{"DR_NO": "240104567", "Date Rptd": "02/03/2024 12:00:00 AM",
            "DATE OCC": "02/02/2024 12:00:00 AM", "TIME OCC": "2130", "AREA": 1,
            "AREA NAME": "Central", "Rpt Dist No": "0111", "Part 1-2": 1, "Crm Cd": 624,
            "Vict Age": 32, "Vict Sex": "M", "Vict Descent": "H", "Premis Cd": 102,
            "Weapon Used Cd": 400, "Crm Cd 1": 624, "LOCATION": "700 S  BROADWAY",
            "LAT": 34.0452, "LON": -118.2534}]"#;
        let rows = parse_rows(json.as_bytes(), "application/json").unwrap();
        assert_eq!(rows, csv);
    }

    #[test]
    fn bad_bodies_are_refused_naming_the_row_and_field() {
        let bad_date = ROW.replacen("02/02/2024 12:00:00 AM", "not a date", 1);
        let body = format!("{HEADER}\n{ROW}\n{bad_date}\n");
        let e = parse_rows(body.as_bytes(), "text/csv").unwrap_err();
        match &e {
            IngestError::BadRow {
                row, field, value, ..
            } => {
                assert_eq!(
                    (*row, field.as_str(), value.as_str()),
                    (2, "DATE OCC", "not a date")
                );
            }
            other => panic!("{other:?}"),
        }
        let bad_area = ROW.replacen(",01,Central,", ",77,Atlantis,", 1);
        let e = parse_rows(format!("{HEADER}\n{bad_area}\n").as_bytes(), "text/csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 1") && e.contains("AREA"), "{e}");
        let e =
            parse_rows(br#"[{"DR_NO": "1", "COLOUR": "red"}]"#, "application/json").unwrap_err();
        assert_eq!(
            e,
            IngestError::UnknownField {
                row: 1,
                field: "COLOUR".into()
            }
        );
        assert!(matches!(
            parse_rows(b"[1]", "application/json"),
            Err(IngestError::Json(_))
        ));
        assert!(matches!(
            parse_rows(b"{", "application/json"),
            Err(IngestError::Json(_))
        ));
        assert_eq!(
            parse_rows(b"[]", "application/json"),
            Err(IngestError::Empty)
        );
        assert!(matches!(
            parse_rows(b"x", "text/plain"),
            Err(IngestError::ContentType(_))
        ));
        assert!(parse_rows(b"a,b\n1,2\n", "text/csv").is_err());
    }
}
