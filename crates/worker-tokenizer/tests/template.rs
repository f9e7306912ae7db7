//! Chat templates from the fixture GGUFs, rendered by minijinja, against the goldens that
//! Python jinja2 made with transformers' settings
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
    assert_eq!(checked, 16);
}
