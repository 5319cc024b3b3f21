//! Compiles the protocol with protox (pure Rust: no system `protoc`): the contract
//! (`config.proto`, client and server) and the control plane's pre-encoded frames
//! (`frames.proto`, served by a second server of the same `ConfigDiscovery/Stream` route whose
//! responses are `ControlPlaneFrame`s).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=modelgw");
    let fds = protox::compile(
        ["modelgw/config/v1/config.proto", "modelgw/config/v1/frames.proto"],
        ["."],
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The credential carries an upstream API key, the gateway its pin key: their Debug
        // must never print them.
        .skip_debug(["modelgw.config.v1.Credential", "modelgw.config.v1.Gateway"])
        // Frames hold bytes encoded once and shared by every stream (reference-counted).
        .bytes(".modelgw.config.v1.ControlPlaneFrame")
        .compile_fds(fds)?;

    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("frames");
    std::fs::create_dir_all(&out_dir)?;
    let stream = tonic_build::manual::Method::builder()
        .name("stream")
        .route_name("Stream")
        .input_type("crate::config::v1::DataPlaneMessage")
        .output_type("crate::config::v1::ControlPlaneFrame")
        .codec_path("tonic_prost::ProstCodec")
        .client_streaming()
        .server_streaming()
        .build();
    let service = tonic_build::manual::Service::builder()
        .name("ConfigDiscovery")
        .package("modelgw.config.v1")
        .method(stream)
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .build_server(true)
        .out_dir(out_dir)
        .compile(&[service]);
    Ok(())
}
