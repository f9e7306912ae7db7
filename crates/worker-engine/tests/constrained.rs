//! Constrained decoding on the real SmolLM2-135M model: outputs match their regex or parse
//! as JSON of their schema, complete outputs stop as at EOS, a `max_tokens` cut says so,
//! sampling still applies under the mask, a constrained request decodes the same alone and
//! beside others, and bad constraints are refused at submit.

use std::sync::OnceLock;

use worker_compute::{CpuBackend, CpuConfig};
use worker_engine::{
    Completion, Constraint, Engine, EngineConfig, EngineError, GenerationRequest, SamplingConfig,
    StopReason,
};

const CHAT: &str =
    "<|im_start|>user\nDescribe a person as JSON.<|im_end|>\n<|im_start|>assistant\n";

fn load(slots: usize) -> Engine {
    let path = worker_testdata::model(worker_testdata::SMOLLM2);
    let file = worker_gguf::GgufFile::open(&path).expect("open SmolLM2");
    let backend = CpuBackend::new(CpuConfig {
        threads: 2,
        ..CpuConfig::default()
    });
    let config = EngineConfig {
        slots,
        context: 512,
        max_batch: 64,
        ..EngineConfig::default()
    };
    Engine::load(&file, Box::new(backend), config).expect("load SmolLM2")
}

/// One engine with several slots, shared by the tests (which run concurrently, so their
/// sequences decode together in batches).
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| load(4))
}

fn request(
    constraint: Constraint,
    temperature: f32,
    seed: u64,
    max_tokens: usize,
) -> GenerationRequest {
    GenerationRequest {
        sampling: SamplingConfig {
            temperature,
            seed,
            ..SamplingConfig::default()
        },
        max_tokens: Some(max_tokens),
        constraint: Some(constraint),
        ..GenerationRequest::new(CHAT)
    }
}

fn run(req: GenerationRequest) -> Completion {
    engine()
        .submit(req)
        .expect("accepted")
        .wait()
        .expect("generated")
}

const PERSON: &str = r#"{
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 1, "maxItems": 3}
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": false
}"#;

fn check_person(text: &str) {
    let v: serde_json::Value = serde_json::from_str(text).expect("the output is JSON");
    let obj = v.as_object().expect("an object");
    assert_eq!(obj.len(), 3, "{text}");
    assert!(
        obj["name"]
            .as_str()
            .is_some_and(|s| s.chars().count() <= 16),
        "{text}"
    );
    assert!(obj["age"].as_u64().is_some_and(|a| a <= 120), "{text}");
    let tags = obj["tags"].as_array().expect("tags");
    assert!((1..=3).contains(&tags.len()), "{text}");
    assert!(tags
        .iter()
        .all(|t| ["a", "b", "c"].contains(&t.as_str().unwrap_or(""))));
}

#[test]
fn json_schema_outputs_validate_greedy_and_sampled() {
    for (temperature, seed) in [(0.0, 0), (0.9, 1), (1.2, 2), (1.0, 3)] {
        let c = run(request(
            Constraint::JsonSchema(PERSON.into()),
            temperature,
            seed,
            200,
        ));
        assert_eq!(c.stop_reason, StopReason::Eos, "{}", c.text);
        check_person(&c.text);
    }
}

#[test]
fn json_object_outputs_parse() {
    let c = run(request(Constraint::JsonObject, 0.7, 5, 300));
    if c.stop_reason == StopReason::Eos {
        let v: serde_json::Value = serde_json::from_str(&c.text).expect("JSON");
        assert!(v.is_object());
    } else {
        assert_eq!(c.stop_reason, StopReason::MaxTokens);
        assert!(c.text.starts_with('{'));
    }
}

#[test]
fn regex_outputs_match_and_stop_when_complete() {
    let c = run(request(
        Constraint::Regex("[0-9]{3}-[0-9]{4}".into()),
        1.0,
        9,
        50,
    ));
    assert_eq!(c.stop_reason, StopReason::Eos);
    let b = c.text.as_bytes();
    assert_eq!(b.len(), 8, "{}", c.text);
    assert!(b[..3].iter().chain(&b[4..]).all(u8::is_ascii_digit) && b[3] == b'-');
}

#[test]
fn lark_grammars_constrain_too() {
    let grammar = r#"start: "The answer is " ("yes" | "no") ".""#;
    let c = run(request(Constraint::Lark(grammar.into()), 0.8, 4, 30));
    assert_eq!(c.stop_reason, StopReason::Eos);
    assert!(
        c.text == "The answer is yes." || c.text == "The answer is no.",
        "{}",
        c.text
    );
}

#[test]
fn a_max_tokens_cut_is_a_length_stop() {
    let c = run(request(Constraint::JsonSchema(PERSON.into()), 0.0, 0, 3));
    assert_eq!(c.stop_reason, StopReason::MaxTokens);
    assert_eq!(c.ids.len(), 3);
    assert!(serde_json::from_str::<serde_json::Value>(&c.text).is_err());
}

#[test]
fn the_sampler_still_chooses_among_allowed_tokens() {
    // Different seeds at a high temperature give different valid outputs; the same seed gives
    // the same one.
    let mut outputs = std::collections::BTreeSet::new();
    for seed in 0..6 {
        let c = run(request(
            Constraint::JsonSchema(PERSON.into()),
            1.5,
            seed,
            200,
        ));
        check_person(&c.text);
        outputs.insert(c.text);
    }
    assert!(outputs.len() > 1, "sampling had no effect: {outputs:?}");
    let a = run(request(Constraint::JsonSchema(PERSON.into()), 1.5, 42, 200));
    let b = run(request(Constraint::JsonSchema(PERSON.into()), 1.5, 42, 200));
    assert_eq!(a.ids, b.ids);
}

#[test]
fn a_constrained_request_decodes_the_same_alone_and_beside_others() {
    let constrained = || request(Constraint::JsonSchema(PERSON.into()), 0.8, 17, 120);
    let alone = load(1)
        .submit(constrained())
        .expect("accepted")
        .wait()
        .expect("generated");
    let mut others = Vec::new();
    for seed in 0..3 {
        let req = if seed == 1 {
            request(Constraint::Regex("[a-z ]{1,40}".into()), 1.0, seed, 40)
        } else {
            GenerationRequest {
                max_tokens: Some(60),
                ..GenerationRequest::new(CHAT)
            }
        };
        others.push(engine().submit(req).expect("accepted"));
    }
    let beside = run(constrained());
    for g in others {
        g.wait().expect("generated");
    }
    assert_eq!(alone.ids, beside.ids);
}

#[test]
fn bad_constraints_are_refused_at_submit() {
    for c in [
        Constraint::JsonSchema("{not json".into()),
        Constraint::JsonSchema(r##"{"$ref": "#/$defs/nowhere"}"##.into()),
        Constraint::Regex("[".into()),
        Constraint::Lark("start: nothing_here".into()),
    ] {
        match engine().submit(request(c, 0.0, 0, 10)) {
            Err(EngineError::Constraint(_)) => {}
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("accepted"),
        }
    }
    // The engine still serves.
    let c = run(request(Constraint::Regex("ok".into()), 0.0, 0, 5));
    assert_eq!(c.text, "ok");
}
