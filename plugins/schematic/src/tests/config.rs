use super::*;

#[test]
fn describe_names_the_plugin_and_its_bindings() {
    let info = harness().describe();
    assert_eq!(info.name, "schematic");
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert!(!info.description.is_empty());
    let bindings: Vec<(&str, &str, &str)> = info
        .bindings
        .iter()
        .map(|b| (b.entity.as_str(), b.source.as_str(), b.collection.as_str()))
        .collect();
    assert_eq!(
        bindings,
        [
            ("flags", "schematic", "rulesengine.Flags"),
            ("flags", "schematic", "rulesengine.Flag"),
            ("companies", "schematic", "rulesengine.Company"),
            ("companies", "schematic", "rest.Company"),
            ("users", "schematic", "rulesengine.User"),
            ("users", "schematic", "rest.User"),
        ]
    );
}

#[test]
fn version_defaults_to_v1_for_every_entity() {
    let h = harness();
    assert_eq!(DEFAULT_CACHE_VERSION, "v1");
    for entity in [FLAGS, COMPANIES, USERS] {
        assert_eq!(h.version(entity), "v1");
    }
    // Before any configuration too.
    let fresh = Harness::<SchematicPlugin>::default();
    assert_eq!(fresh.version(FLAGS), "v1");
}

#[test]
fn configured_cache_version_is_the_version() {
    let mut h = harness();
    for entity in [FLAGS, COMPANIES, USERS] {
        h.configure(entity, json!({"cache_version": "a1b2c3d4"}))
            .unwrap();
    }
    for entity in [FLAGS, COMPANIES, USERS] {
        assert_eq!(h.version(entity), "a1b2c3d4");
    }
    // Configuring again with {} goes back to the default.
    h.configure(USERS, json!({})).unwrap();
    assert_eq!(h.version(USERS), "v1");
    assert_eq!(h.version(FLAGS), "a1b2c3d4");
}

#[test]
fn empty_and_null_configurations_are_accepted() {
    let mut h = Harness::<SchematicPlugin>::default();
    h.configure(FLAGS, json!({})).unwrap();
    h.configure(COMPANIES, Value::Null).unwrap();
    h.configure(USERS, json!({"cache_version": null})).unwrap();
    assert_eq!(h.version(USERS), "v1");
}

#[test]
fn unknown_configuration_fields_are_rejected() {
    let mut h = Harness::<SchematicPlugin>::default();
    let err = h
        .configure(FLAGS, json!({"cache_versoin": "x"}))
        .unwrap_err();
    assert!(err.contains("flags"), "{err}");
    assert!(err.contains("cache_versoin"), "{err}");
    let err = h.configure(FLAGS, json!(["v1"])).unwrap_err();
    assert!(err.contains("invalid configuration"), "{err}");
    let err = h.configure(FLAGS, json!({"cache_version": 7})).unwrap_err();
    assert!(err.contains("invalid configuration"), "{err}");
}

#[test]
fn bad_cache_versions_are_rejected() {
    let mut h = Harness::<SchematicPlugin>::default();
    for bad in ["", "a:b", "v*", "v 1", "ver[1]", &"x".repeat(65)] {
        let err = h
            .configure(COMPANIES, json!({"cache_version": bad}))
            .unwrap_err();
        assert!(err.contains("companies"), "{err}");
        assert!(err.contains("cache_version"), "{err}");
    }
    h.configure(COMPANIES, json!({"cache_version": "1.2_3-x"}))
        .unwrap();
    assert_eq!(h.version(COMPANIES), "1.2_3-x");
    // A rejected configuration does not keep the previous version.
    h.configure(COMPANIES, json!({"cache_version": "a:b"}))
        .unwrap_err();
    assert_eq!(h.version(COMPANIES), "v1");
}

#[test]
fn unknown_entities_are_rejected() {
    let mut h = Harness::<SchematicPlugin>::default();
    let err = h.configure("orders", json!({})).unwrap_err();
    assert!(err.contains("orders"), "{err}");
    let err = h
        .shape_one("orders", Change::delete(COLLECTION_COMPANY, "comp_1"))
        .unwrap_err();
    assert!(err.contains("orders"), "{err}");
    let err = h
        .keys("orders", &[Row::delete("orders", "x")])
        .remove(0)
        .unwrap_err();
    assert!(err.contains("orders"), "{err}");
}

#[test]
fn no_table_layout() {
    let h = harness();
    for entity in [FLAGS, COMPANIES, USERS] {
        assert_eq!(h.table(entity), None);
    }
}

#[test]
fn confirmations_shape_to_nothing() {
    let h = harness();
    for (entity, collection) in [
        (COMPANIES, COLLECTION_COMPANIES),
        (USERS, COLLECTION_USERS),
        (FLAGS, COLLECTION_COMPANIES),
    ] {
        let change = Change::upsert(collection, "", json!({"status": "subscribed"}));
        assert_eq!(shape_ok(&h, entity, change), Shaped::none());
    }
}

#[test]
fn collections_of_other_entities_are_item_errors() {
    let h = harness();
    let err = shape_err(
        &h,
        USERS,
        Change::upsert(COLLECTION_COMPANY, "comp_1", company_fixture()),
    );
    assert!(err.contains("rulesengine.Company"), "{err}");
    assert!(err.contains("users"), "{err}");
    let err = shape_err(
        &h,
        FLAGS,
        Change::upsert("rulesengine.Unknown", "f", json!({})),
    );
    assert!(err.contains("rulesengine.Unknown"), "{err}");
    let err = shape_err(
        &h,
        COMPANIES,
        Change::upsert(COLLECTION_FLAG, "f", flag_fixture("f", "f", true)),
    );
    assert!(err.contains("companies"), "{err}");
}
