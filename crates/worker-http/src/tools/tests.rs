use super::*;

fn weather() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    }}])
}

/// A template that renders tools and writes Hermes calls.
fn hermes() -> ChatTemplate {
    ChatTemplate::new("{% if tools %}<tool_call>{% endif %}{{ messages[0].content }}").unwrap()
}

/// llama.cpp's copy of a real model's chat template.
fn real_template(name: &str) -> ChatTemplate {
    let path = worker_testdata::chat_template(name);
    let source = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} (run `cargo xtask fetch`): {e}", path.display()));
    ChatTemplate::new(&source).unwrap()
}

fn field_of(tools: Value, choice: Value) -> String {
    parse(Some(&tools), Some(&choice), None, Some(&hermes()))
        .map(|_| String::new())
        .unwrap_or_else(|e| e.field)
}

#[test]
fn choices_parse() {
    for (choice, want) in [
        (json!("auto"), Choice::Auto),
        (json!("none"), Choice::None),
        (json!("required"), Choice::Required),
        (
            json!({"type": "function", "function": {"name": "get_weather"}}),
            Choice::Named("get_weather".into()),
        ),
    ] {
        let t = parse(Some(&weather()), Some(&choice), None, Some(&hermes()))
            .unwrap()
            .unwrap();
        assert_eq!(t.choice, want);
    }
    assert!(parse(None, None, None, Some(&hermes())).unwrap().is_none());
}

#[test]
fn bad_tools_name_the_field() {
    assert_eq!(
        field_of(
            weather(),
            json!({"type": "function", "function": {"name": "nope"}})
        ),
        "tool_choice"
    );
    assert_eq!(field_of(weather(), json!("sometimes")), "tool_choice");
    let no_params = json!([{"type": "function", "function": {"name": "f"}}]);
    assert_eq!(
        field_of(no_params, json!("auto")),
        "tools[0].function.parameters"
    );
    let bad_name = json!([{"type": "function", "function": {"name": "a b", "parameters": {}}}]);
    assert_eq!(field_of(bad_name, json!("auto")), "tools[0].function.name");
    assert_eq!(field_of(json!([]), json!("auto")), "tools");
    assert_eq!(
        field_of(json!([{"type": "retrieval"}]), json!("auto")),
        "tools[0]"
    );
    let e = message_json("tool", "42".into(), None, None, 3).unwrap_err();
    assert_eq!(e.field, "messages[3].tool_call_id");
    let e = message_json("user", String::new(), Some(&json!([{}])), None, 1).unwrap_err();
    assert_eq!(e.field, "messages[1].tool_calls");
}

#[test]
fn hermes_calls_parse_and_markup_stays_out_of_content() {
    let text = "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}\n</tool_call>";
    let (content, calls) = parse_hermes(text);
    assert_eq!(content, "Let me look.");
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].name, "get_weather");
    assert_eq!(calls[1].arguments, "{\"city\":\"Rome\"}");
    let (content, calls) = parse_hermes("<tool_call>\n{\"name\": \"get_we");
    assert_eq!(content, "");
    assert!(calls.is_empty());
}

#[test]
fn generic_answers_parse() {
    let (c, calls) =
        parse_generic("{\"tool_calls\": [{\"name\": \"f\", \"arguments\": {\"x\": 1}}]}");
    assert_eq!(c, "");
    assert_eq!(
        calls,
        vec![Call {
            name: "f".into(),
            arguments: "{\"x\":1}".into()
        }]
    );
    assert_eq!(
        parse_generic("{\"content\": \"hi\"}"),
        ("hi".into(), Vec::new())
    );
    assert_eq!(parse_generic("{\"tool_ca"), (String::new(), Vec::new()));
}

#[test]
fn stream_deltas_send_index_id_and_name_first() {
    let calls = [Call {
        name: "f".into(),
        arguments: "{}".into(),
    }];
    let d = serde_json::to_value(stream_deltas("", &calls, Format::Hermes)).unwrap();
    let d = d.as_array().unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(d[0]["tool_calls"][0]["index"], 0);
    assert_eq!(d[0]["tool_calls"][0]["function"]["name"], "f");
    assert!(d[0]["tool_calls"][0]["id"]
        .as_str()
        .unwrap()
        .starts_with("call_"));
    assert_eq!(d[1]["tool_calls"][0]["function"]["arguments"], "{}");
}

#[test]
fn generic_messages_carry_the_tool_list_and_earlier_turns() {
    let t = parse(Some(&weather()), Some(&json!("required")), None, None)
        .unwrap()
        .unwrap();
    let msgs = vec![
        json!({"role": "user", "content": "Weather in Paris?"}),
        message_json(
            "assistant",
            String::new(),
            Some(&json!([{"id": "c1", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}])),
            None,
            1,
        )
        .unwrap(),
        message_json("tool", "sunny".into(), None, Some("c1"), 2).unwrap(),
    ];
    let out = generic_messages(msgs, Some(&t));
    assert_eq!(out[0]["role"], "system");
    assert!(out[0]["content"].as_str().unwrap().contains("get_weather"));
    assert!(out[2]["content"].as_str().unwrap().contains("Paris"));
    assert_eq!(out[3]["role"], "user");
    assert!(out[3]["content"].as_str().unwrap().contains("sunny"));
}

#[test]
fn real_templates_choose_their_models_formats() {
    for (name, want) in [
        ("Qwen-Qwen2.5-7B-Instruct", Format::Hermes),
        (
            "NousResearch-Hermes-3-Llama-3.1-8B-tool_use",
            Format::Hermes,
        ),
        ("meta-llama-Llama-3.1-8B-Instruct", Format::Llama3),
        ("meta-llama-Llama-3.3-70B-Instruct", Format::Llama3),
        ("mistralai-Mistral-Nemo-Instruct-2407", Format::Mistral),
        ("google-gemma-2-2b-it", Format::Generic),
        ("openai-gpt-oss-120b", Format::Harmony),
    ] {
        let t = parse(Some(&weather()), None, None, Some(&real_template(name)))
            .unwrap()
            .unwrap();
        assert_eq!(t.format, want, "{name}");
    }
}

#[test]
fn llama3_and_mistral_calls_parse_and_markup_stays_out_of_content() {
    let (content, calls) =
        parse_llama3(r#" {"name": "get_weather", "parameters": {"city": "Paris"}}"#);
    assert_eq!(content, "");
    assert_eq!(
        calls,
        [Call {
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into()
        }]
    );
    assert_eq!(
        parse_llama3("It is sunny."),
        ("It is sunny.".into(), vec![])
    );
    assert_eq!(
        parse_llama3(r#"{"name": "get_we"#),
        (String::new(), vec![]),
        "cut short"
    );

    let text = r#"Checking. [TOOL_CALLS][{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"x": 1}}]"#;
    let (content, calls) = parse_mistral(text);
    assert_eq!(content, "Checking.");
    assert_eq!(
        calls.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(calls[1].arguments, r#"{"x":1}"#);
    assert_eq!(
        parse_mistral("[TOOL_CALLS][{\"name"),
        (String::new(), vec![])
    );
}

#[test]
fn mistral_call_ids_come_back_through_its_template() {
    // Mistral's template refuses earlier calls whose ids are not 9 alphanumerics: the ids
    // we hand out must render when the client sends the call and its result back.
    let template = real_template("mistralai-Mistral-Nemo-Instruct-2407");
    let t = parse(
        Some(&weather()),
        Some(&json!("required")),
        None,
        Some(&template),
    )
    .unwrap()
    .unwrap();
    let (message, reason) = t.message(
        r#"[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]"#,
        "stop",
    );
    assert_eq!(reason, "tool_calls");
    let message = serde_json::to_value(message).unwrap();
    let call = &message["tool_calls"][0];
    let id = call["id"].as_str().unwrap();
    assert!(
        id.len() == 9 && id.chars().all(|c| c.is_ascii_alphanumeric()),
        "{id}"
    );
    let messages = json!([
        {"role": "user", "content": "Weather in Paris?"},
        message_json("assistant", String::new(), Some(&message["tool_calls"]), None, 1).unwrap(),
        message_json("tool", "sunny".into(), None, Some(id), 2).unwrap(),
    ]);
    let ctx = worker_tokenizer::ChatContext {
        add_generation_prompt: true,
        ..Default::default()
    };
    let text = template
        .render_json(&messages, Some(&weather()), &ctx)
        .unwrap();
    assert!(text.contains(&format!("\"id\": \"{id}\"")), "{text}");
    assert!(
        text.contains("[TOOL_CALLS]") && text.contains("sunny"),
        "{text}"
    );
    // And an OpenAI-style id is refused by that template, which is why we do not use one.
    let mut bad = messages.clone();
    bad[1]["tool_calls"][0]["id"] = json!("call_0123456789abcdef");
    assert!(template.render_json(&bad, Some(&weather()), &ctx).is_err());
}

#[test]
fn every_format_and_choice_compiles_on_both_vocabularies() {
    // SmolLM2 has none of the markers as special tokens (the plain-text, lazy-prefix
    // grammars); Qwen2.5 has `<tool_call>` and `</tool_call>` as special tokens.
    for model in [worker_testdata::SMOLLM2, worker_testdata::QWEN25] {
        let file = worker_gguf::GgufFile::open(worker_testdata::model(model)).unwrap();
        let backend = Box::new(worker_compute::CpuBackend::new(Default::default()));
        let config = worker_engine::EngineConfig {
            context: 64,
            max_batch: 16,
            ..Default::default()
        };
        let engine = Engine::load(&file, backend, config).unwrap();
        let two = json!([weather()[0], {"type": "function", "function": {
            "name": "get_time", "parameters": {"type": "object"}}}]);
        for format in [
            Format::Hermes,
            Format::Llama3,
            Format::Mistral,
            Format::Generic,
        ] {
            for choice in [
                json!("auto"),
                json!("required"),
                json!({"type": "function", "function": {"name": "get_time"}}),
            ] {
                let mut t = parse(Some(&two), Some(&choice), None, None)
                    .unwrap()
                    .unwrap();
                t.format = format;
                let c = t.constraint(engine.tokenizer().as_ref()).unwrap();
                engine
                    .check_constraint(&c)
                    .unwrap_or_else(|e| panic!("{model} {format:?} {choice}: {e}: {c:?}"));
            }
        }
    }
}

/// Feeds `answer` to a fresh content streamer in pieces of `step` bytes (at char
/// boundaries); returns what it released and what the end adds as content.
fn stream_content(t: &Tools, answer: &str, step: usize) -> (String, String) {
    let mut stream = t.content_stream().expect("auto streams content");
    let mut released = String::new();
    let mut upto = 0;
    while upto < answer.len() {
        upto = (upto + step).min(answer.len());
        while !answer.is_char_boundary(upto) {
            upto += 1;
        }
        if let Some(piece) = stream.advance(&answer[..upto]) {
            released.push_str(&piece);
        }
    }
    assert_eq!(released, stream.sent());
    let (deltas, _) = t.stream_end(answer, stream.sent(), "stop");
    let rest: String = deltas.iter().filter_map(|d| d.content.clone()).collect();
    (released, rest)
}

#[test]
fn auto_content_streams_before_the_call_and_never_the_markup() {
    let t = parse(
        Some(&weather()),
        Some(&json!("auto")),
        None,
        Some(&hermes()),
    )
    .unwrap()
    .unwrap();
    let call = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    for step in [1, 2, 3, 7, 1000] {
        // Text, then a call: the text goes out before the call, trimmed as parsed.
        let answer = format!("\n Let me check the weather, café.  \n{call}");
        let (released, rest) = stream_content(&t, &answer, step);
        assert_eq!(released, "Let me check the weather, café.", "step {step}");
        assert_eq!(rest, "");
        assert_eq!(t.parse_output(&answer).0, released);
        // A plain answer streams whole; a '<' that is not the marker goes out once decided.
        let answer = "1 < 2, and <tool is not a call. ";
        let (released, rest) = stream_content(&t, answer, step);
        assert_eq!(
            released + &rest,
            "1 < 2, and <tool is not a call.",
            "step {step}"
        );
        // Text after a call is content too: it comes at the end.
        let answer = format!("Checking. {call} Done.");
        let (released, rest) = stream_content(&t, &answer, step);
        assert_eq!(released, "Checking.");
        assert_eq!(released + &rest, t.parse_output(&answer).0);
    }
    // Required and named choices write calls only: nothing to stream.
    let required = parse(
        Some(&weather()),
        Some(&json!("required")),
        None,
        Some(&hermes()),
    )
    .unwrap()
    .unwrap();
    assert!(required.content_stream().is_none());
}

#[test]
fn llama3_auto_streams_text_but_holds_an_answer_that_opens_with_a_brace() {
    let mut t = parse(
        Some(&weather()),
        Some(&json!("auto")),
        None,
        Some(&hermes()),
    )
    .unwrap()
    .unwrap();
    t.format = Format::Llama3;
    let (released, _) = stream_content(&t, "  It is sunny in Paris.", 2);
    assert_eq!(released, "It is sunny in Paris.");
    let call = r#" {"name": "get_weather", "parameters": {"city": "Paris"}}"#;
    let (released, rest) = stream_content(&t, call, 2);
    assert_eq!((released.as_str(), rest.as_str()), ("", ""));
}
