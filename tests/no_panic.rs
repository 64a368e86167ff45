//! No input makes the loader or the expression parser panic.

mod common;

use gradline_engine::expr::{Origin, parse_condition, parse_template};
use gradline_engine::load;
use proptest::prelude::*;

fn seeds() -> Vec<String> {
    common::pipeline_files()
        .iter()
        .map(|f| std::fs::read_to_string(common::root().join(f)).unwrap())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn any_string_loads_without_panicking(text in "\\PC*") {
        let _ = load("fuzz.yaml", &text, &gradline_stages::registry(), &[]);
    }

    #[test]
    fn yamlish_strings_load_without_panicking(text in "[a-z_:{}\\[\\], \\n\\t$\"'.-]{0,200}") {
        let _ = load("fuzz.yaml", &text, &gradline_stages::registry(), &[]);
    }

    #[test]
    fn expressions_parse_without_panicking(text in "\\PC{0,80}") {
        let _ = parse_template(&text, Origin::exact(0));
        let _ = parse_condition(&text, Origin::exact(0));
        let _ = parse_template(&format!("x ${{{{ {text} }}}} y"), Origin::exact(3));
    }

    #[test]
    fn mutated_pipelines_load_without_panicking(
        pick in 0usize..64, at in 0usize..4096, cut in 0usize..64, insert in "\\PC{0,12}"
    ) {
        let all = seeds();
        let text = &all[pick % all.len()];
        let mut at = at % (text.len() + 1);
        while !text.is_char_boundary(at) { at -= 1; }
        let mut end = (at + cut).min(text.len());
        while !text.is_char_boundary(end) { end -= 1; }
        let mutated = format!("{}{}{}", &text[..at], insert, &text[end.max(at)..]);
        let loaded = load("fuzz.yaml", &mutated, &gradline_stages::registry(), &[]);
        if let Some(plan) = loaded.plan(&common::no_env) {
            let _ = plan.to_text();
        }
        let _ = loaded.render();
    }
}
