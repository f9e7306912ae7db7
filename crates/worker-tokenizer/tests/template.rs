//! Chat templates from the fixture GGUFs and llama.cpp's copy of gpt-oss's (tools, tool
//! calls and results, `thinking`, `strftime_now`), rendered by minijinja, against the goldens
//! that Python jinja2 made with transformers' settings
//! (`scripts/goldens/make_chat_template_goldens.py`).

use worker_tokenizer::{from_gguf, ChatContext, ChatMessage, ChatTemplate};

#[test]
fn templates_match_jinja2_goldens() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/golden/tokenizer/chat_templates.json"
    );
    let goldens: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut checked = 0;
    for (name, g) in goldens.as_object().unwrap() {
        if g.get("template").is_some() {
            checked += reference_template(name, g);
            continue;
        }
        let file =
            worker_gguf::GgufFile::open(worker_testdata::model(g["model"].as_str().unwrap()))
                .unwrap();
        let md = file.metadata();
        let template = ChatTemplate::from_gguf(md).unwrap().expect("template");
        let tok = from_gguf(md).unwrap();
        let text = |id: Option<u32>| tok.token_text(id.unwrap()).unwrap().to_string();
        for case in g["cases"].as_array().unwrap() {
            let messages: Vec<ChatMessage> =
                serde_json::from_value(case["messages"].clone()).unwrap();
            let ctx = ChatContext {
                add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap(),
                bos_token: text(tok.bos()),
                eos_token: text(tok.eos()),
                now: None,
                variables: Default::default(),
            };
            let got = template.render(&messages, &ctx).unwrap();
            assert_eq!(
                got,
                case["expected"].as_str().unwrap(),
                "{name}: {messages:?}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 16 + 14);
}

/// One of llama.cpp's reference templates (gpt-oss's) over OpenAI-shaped messages and tools,
/// with `strftime_now` at the golden's instant; returns the cases checked.
fn reference_template(name: &str, g: &serde_json::Value) -> usize {
    let file = g["template"].as_str().unwrap();
    let source = std::fs::read_to_string(worker_testdata::chat_template(
        file.trim_end_matches(".jinja"),
    ))
    .unwrap();
    let template = ChatTemplate::new(&source).unwrap();
    assert!(template.supports_tools(), "{name}");
    let now =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(g["now_epoch"].as_u64().unwrap());
    let cases = g["cases"].as_array().unwrap();
    for case in cases {
        let ctx = ChatContext {
            add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap(),
            now: Some(now),
            ..ChatContext::default()
        };
        let tools = Some(&case["tools"]).filter(|t| !t.is_null());
        let got = template
            .render_json(&case["messages"], tools, &ctx)
            .unwrap_or_else(|e| panic!("{name}: {}: {e}", case["messages"]));
        assert_eq!(
            got,
            case["expected"].as_str().unwrap(),
            "{name}: {}",
            case["messages"]
        );
    }
    cases.len()
}
