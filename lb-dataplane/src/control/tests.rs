use super::*;

#[test]
fn commands_and_their_levels() {
    assert_eq!(Command::parse(b"stats\n"), Ok(Command::Stats));
    assert_eq!(Command::parse(b"  reload \r\n"), Ok(Command::Reload));
    assert_eq!(Command::Stats.level(), Level::User);
    assert_eq!(Command::Reload.level(), Level::Admin);
    assert!(Level::User < Level::Admin);
    let e = Command::parse(b"drop tables\n").expect_err("unknown");
    assert_eq!(
        e.to_string(),
        "unknown command \"drop tables\": the commands are stats, reload, log reopen, drain, undrain"
    );
    assert_eq!(
        Command::parse(b"drain\n"),
        Ok(Command::Drain { deadline_s: None })
    );
    assert_eq!(
        Command::parse(b" drain  30 \n"),
        Ok(Command::Drain {
            deadline_s: Some(30)
        })
    );
    assert_eq!(Command::parse(b"undrain"), Ok(Command::Undrain));
    assert_eq!(Command::Drain { deadline_s: None }.level(), Level::Admin);
    assert_eq!(Command::Undrain.level(), Level::Admin);
    for bad in [
        "drain soon",
        "drain -1",
        "drain 86401",
        "drain 1 2",
        "stats now",
        "undrain 5",
    ] {
        let e = Command::parse(bad.as_bytes()).expect_err(bad).to_string();
        assert!(
            e.starts_with(&format!("{}: ", bad.split(' ').next().unwrap_or(""))),
            "{e}"
        );
    }
    assert_eq!(Command::parse(b"log  reopen\n").ok(), None);
    assert_eq!(Command::parse(b" log reopen\n"), Ok(Command::LogReopen));
    assert_eq!(Command::LogReopen.level(), Level::Admin);
    let long = Command::parse(&[b'x'; 1000])
        .expect_err("unknown")
        .to_string();
    assert!(long.len() < 200, "not echoed whole: {long}");
    assert_eq!(
        Command::parse(&[0xff, b'\n']).map_err(|e| e.to_string()),
        Err("the command is not UTF-8".into())
    );
}
