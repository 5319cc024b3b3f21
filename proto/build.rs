//! Compiles `modelgw/config/v1/config.proto` with protox (pure Rust: no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=modelgw");
    let fds = protox::compile(["modelgw/config/v1/config.proto"], ["."])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The credential carries an upstream API key: its Debug must never print it.
        .skip_debug(["modelgw.config.v1.Credential"])
        .compile_fds(fds)?;
    Ok(())
}
