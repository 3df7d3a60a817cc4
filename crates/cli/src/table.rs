//! The one look of every table the CLI prints (comfy-table): a header row in capitals, then one
//! line per row, columns left-aligned and three spaces apart, no borders and no trailing
//! spaces — like kubectl, easy to read, to copy and to cut with `awk`. Cells never wrap. Every
//! listing also has `--output json`, for scripts.

use comfy_table::presets::NOTHING;

/// Spaces between columns.
const GAP: u16 = 3;

/// A table being filled.
#[derive(Debug)]
pub(crate) struct Table(comfy_table::Table);

impl Table {
    /// A table with these column headers.
    pub(crate) fn new(header: &[&str]) -> Self {
        let mut table = comfy_table::Table::new();
        table.load_style(NOTHING);
        table.set_header(header.to_vec());
        for column in table.column_iter_mut() {
            column.set_padding((0, GAP));
        }
        Self(table)
    }

    /// Adds a row, one cell per column.
    pub(crate) fn row<T: ToString>(&mut self, cells: impl IntoIterator<Item = T>) -> &mut Self {
        self.0
            .add_row(cells.into_iter().map(|c| c.to_string()).collect::<Vec<_>>());
        self
    }

    /// The table as text, one line per row, without a final newline.
    pub(crate) fn render(&self) -> String {
        self.0.trim_fmt()
    }

    /// Prints the table on standard output.
    pub(crate) fn print(&self) {
        println!("{}", self.render());
    }
}

/// `1,2,3`: a list of ids as the commands take them (`--replicas 1,2,3`).
pub(crate) fn ids(list: &[u64]) -> String {
    list.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `-` for nothing, so every cell has a word (columns stay countable).
pub(crate) fn or_dash(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_plain_aligned_columns() {
        let mut table = Table::new(&["TOPIC", "PARTITION", "REPLICAS"]);
        table.row(["orders", "0", "1,2,3"]);
        table.row(["a-much-longer-name", "12", &ids(&[3])]);
        assert_eq!(
            table.render(),
            "TOPIC                PARTITION   REPLICAS\n\
             orders               0           1,2,3\n\
             a-much-longer-name   12          3"
        );
        let empty = Table::new(&["GROUP", "STATE"]);
        assert_eq!(empty.render(), "GROUP   STATE");
        assert_eq!(or_dash(""), "-");
        assert_eq!(ids(&[]), "");
    }
}
