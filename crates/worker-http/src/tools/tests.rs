use super::*;

fn weather() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    }}])
}

fn field_of(tools: Value, choice: Value) -> String {
    parse(Some(&tools), Some(&choice), None, true)
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
        let t = parse(Some(&weather()), Some(&choice), None, true)
            .unwrap()
            .unwrap();
        assert_eq!(t.choice, want);
    }
    assert!(parse(None, None, None, true).unwrap().is_none());
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
    let d = stream_deltas("", &calls);
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
    let t = parse(Some(&weather()), Some(&json!("required")), None, false)
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
