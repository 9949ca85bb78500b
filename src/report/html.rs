//! report.html: the Markdown report as one self-contained page (tables styled, the
//! Kaplan–Meier and calibration PNGs embedded as data URIs), so it can be mailed or archived
//! as one file.

use base64::Engine;
use pulldown_cmark::{html, Options, Parser};

use super::KM_PNG;

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;\
padding:0 1rem;line-height:1.45;color:#222}table{border-collapse:collapse;margin:.5rem 0 1rem}\
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;font-size:.9rem}\
th{background:#f3f3f3}img{max-width:100%}pre{background:#f6f6f6;padding:.75rem;overflow:auto}";

pub fn page(markdown: &str, km_png: Option<&[u8]>) -> String {
    match km_png {
        Some(png) => page_with_images(markdown, &[(KM_PNG, png)]),
        None => page_with_images(markdown, &[]),
    }
}

/// The page with each `(file name, PNG bytes)` the Markdown links embedded.
pub fn page_with_images(markdown: &str, images: &[(&str, &[u8])]) -> String {
    let mut body = String::new();
    let options = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH;
    html::push_html(&mut body, Parser::new_ext(markdown, options));
    for (name, png) in images {
        let uri = format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(png)
        );
        body = body.replace(&format!("src=\"{name}\""), &format!("src=\"{uri}\""));
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>hdmoe-pipe survival report</title><style>{STYLE}</style></head>\n<body>\n{body}</body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_render_and_the_plot_is_embedded() {
        let md = "# R\n\n| a | b |\n|---|---|\n| 1 | x |\n\n![km](km.png)\n";
        let page = page(md, Some(&[0x89, b'P', b'N', b'G']));
        assert!(page.contains("<table>"));
        assert!(page.contains("<td>x</td>"));
        assert!(page.contains("src=\"data:image/png;base64,iVBORw==\""));
        assert!(!page.contains("src=\"km.png\""));
    }
}
