//! MCAT's `signatures.csv`: one column per gene family, gene symbols down each column.

use std::path::Path;

use super::GenomicsError;

/// One gene family: its column header and its unique genes in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    pub name: String,
    pub genes: Vec<String>,
}

impl Signature {
    /// A dataset name for the group: `Tumor Suppressor Genes` → `tumor_suppressor_genes`.
    pub fn key(&self) -> String {
        let mut key = String::new();
        for c in self.name.trim().chars() {
            if c.is_ascii_alphanumeric() {
                key.push(c.to_ascii_lowercase());
            } else if !key.ends_with('_') {
                key.push('_');
            }
        }
        key.trim_matches('_').to_owned()
    }
}

pub fn read_signatures(path: &Path) -> Result<Vec<Signature>, GenomicsError> {
    let not_signatures = |reason: String| GenomicsError::Signatures {
        path: path.to_owned(),
        reason,
    };
    let mut reader = crate::cohort::open_csv(path).map_err(GenomicsError::Table)?;
    let headers = reader
        .headers()
        .map_err(|e| not_signatures(format!("not a CSV table: {e}")))?
        .clone();
    let mut signatures: Vec<Signature> = headers
        .iter()
        .map(|h| Signature {
            name: h.trim().to_owned(),
            genes: Vec::new(),
        })
        .collect();
    if signatures.iter().any(|s| s.name.is_empty()) {
        return Err(not_signatures(
            "has an unnamed column; the header must name each gene family".into(),
        ));
    }
    let mut keys: Vec<String> = signatures.iter().map(Signature::key).collect();
    keys.sort();
    if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
        return Err(not_signatures(format!(
            "two gene families are both named `{}`",
            w[0]
        )));
    }
    for record in reader.records() {
        let record = record.map_err(|e| not_signatures(format!("not a CSV table: {e}")))?;
        for (signature, gene) in signatures.iter_mut().zip(record.iter()) {
            let gene = gene.trim();
            if gene.is_empty() {
                continue;
            }
            if gene.contains(char::is_whitespace) {
                return Err(not_signatures(format!(
                    "column `{}` holds {gene:?}, which is not a gene symbol",
                    signature.name
                )));
            }
            if !signature.genes.iter().any(|g| g == gene) {
                signature.genes.push(gene.to_owned());
            }
        }
    }
    if let Some(empty) = signatures.iter().find(|s| s.genes.is_empty()) {
        return Err(not_signatures(format!(
            "column `{}` lists no genes",
            empty.name
        )));
    }
    Ok(signatures)
}
