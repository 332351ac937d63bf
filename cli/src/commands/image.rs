//! `locald image extract`, `locald image inspect` and `locald image copy`.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;
use locald_core::cancel::Cancel;
use locald_core::source::{self, ResolvedImage};
use locald_extract::{ExtractOptions, PathFilter};

use super::{open_source, platform};
use crate::args::{CopyArgs, ExtractArgs, InspectArgs, SourceArgs};
use crate::human::bytes as human_bytes;
use crate::output::Output;
use crate::UserError;

async fn resolve(
    args: &SourceArgs,
) -> anyhow::Result<(Box<dyn locald_core::source::ImageSource>, ResolvedImage)> {
    let src = open_source(args.source.as_deref(), &args.registry, false)?;
    let image = resolve_in(src.as_ref(), args).await?;
    Ok((src, image))
}

/// The image `args` name, resolved in `src` for their platform.
async fn resolve_in(
    src: &dyn locald_core::source::ImageSource,
    args: &SourceArgs,
) -> anyhow::Result<ResolvedImage> {
    let (plat, explicit) = platform(args.platform.as_deref())?;
    source::resolve(src, args.image.as_deref(), &plat, explicit)
        .await
        .with_context(|| unresolved(src, args))
}

fn unresolved(src: &dyn locald_core::source::ImageSource, args: &SourceArgs) -> String {
    match &args.image {
        Some(i) => format!("could not resolve image {i:?} in {}", src.describe()),
        None => format!("could not resolve the image in {}", src.describe()),
    }
}

/// `locald image extract`
pub async fn extract(args: ExtractArgs, quiet: bool, cancel: Cancel) -> anyhow::Result<()> {
    let filter = PathFilter::new(&args.paths).map_err(|e| {
        UserError::with_hint(e, "paths are image paths such as /cnb or /usr/local/bin")
    })?;
    let started = Instant::now();
    let (src, image) = resolve(&args.source).await?;
    let options = ExtractOptions {
        filter,
        cancel,
        ..Default::default()
    };
    let total: u64 = image.layers.iter().map(|l| l.size).sum();
    let reporter = crate::progress::reporter(quiet || args.json, total);
    let stats = locald_extract::extract_image(src.as_ref(), &image, &args.to, &options, reporter)
        .await
        .with_context(|| {
            format!(
                "could not extract {} from {} into {}",
                image.name,
                src.describe(),
                args.to.display()
            )
        })?;
    if !options.filter.is_everything()
        && stats.files + stats.dirs + stats.symlinks + stats.hardlinks == 0
    {
        tracing::warn!(
            "the image has nothing at {}",
            options.filter.paths().join(", ")
        );
    }
    let elapsed = started.elapsed();
    if args.json {
        let out = serde_json::json!({
            "image": image.name,
            "source": src.describe(),
            "manifest_digest": image.manifest_digest,
            "platform": image.platform.to_string(),
            "to": args.to.to_string_lossy(),
            "paths": options.filter.paths(),
            "stats": stats,
            "seconds": elapsed.as_secs_f64(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if !quiet {
        eprintln!(
            "Extracted {} ({}, {}) into {} in {:.2}s: {} files, {} directories, {} symlinks, {} hard links, {}",
            image.name,
            image.manifest_digest.short(),
            image.platform,
            args.to.display(),
            elapsed.as_secs_f64(),
            stats.files,
            stats.dirs,
            stats.symlinks,
            stats.hardlinks,
            human_bytes(stats.bytes),
        );
    }
    Ok(())
}

/// `locald image inspect`
pub async fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let (src, image) = resolve(&args.source).await?;
    let cfg = image.config.config().clone().unwrap_or_default();
    let env = cfg.env().clone().unwrap_or_default();
    let labels: BTreeMap<String, String> = cfg
        .labels()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let user = cfg.user().clone().unwrap_or_default();
    let processes = super::run::process_types(&image.config);
    if args.json {
        let out = serde_json::json!({
            "image": image.name,
            "source": src.describe(),
            "manifest_digest": image.manifest_digest,
            "index_digest": (image.root_digest != image.manifest_digest).then_some(&image.root_digest),
            "config_digest": image.config_digest,
            "platform": image.platform,
            "layers": image.layers,
            "env": env,
            "labels": labels,
            "user": user,
            "working_dir": cfg.working_dir(),
            "entrypoint": cfg.entrypoint(),
            "cmd": cfg.cmd(),
            "process_types": processes,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let total: u64 = image.layers.iter().map(|l| l.size).sum();
    println!("Image:     {}", image.name);
    println!("Source:    {}", src.describe());
    println!("Digest:    {}", image.manifest_digest);
    if image.root_digest != image.manifest_digest {
        println!("Index:     {}", image.root_digest);
    }
    println!("Platform:  {}", image.platform);
    println!(
        "User:      {}",
        if user.is_empty() { "(root)" } else { &user }
    );
    if !processes.is_empty() {
        println!(
            "Processes: {}  (locald run IMAGE --process TYPE)",
            processes.join(", ")
        );
    }
    println!("Env:");
    for e in &env {
        println!("  {e}");
    }
    println!("Labels:");
    for (k, v) in &labels {
        let v = if v.len() > 120 {
            format!(
                "{}... ({} bytes)",
                &v[..v.floor_char_boundary(117)],
                v.len()
            )
        } else {
            v.clone()
        };
        println!("  {k}={v}");
    }
    println!("Layers:    {} ({})", image.layers.len(), human_bytes(total));
    for (i, l) in image.layers.iter().enumerate() {
        println!(
            "  {:>3}  {}  {:>10}  {}",
            i + 1,
            l.digest,
            human_bytes(l.size),
            l.media_type
        );
    }
    Ok(())
}

/// `locald image copy`
pub async fn copy(args: CopyArgs, quiet: bool, cancel: Cancel) -> anyhow::Result<()> {
    use locald_core::destination::{copy_image, copy_index, CopyOptions};
    let started = Instant::now();
    let to = Output::parse(&args.to, "--to")?;
    let src = open_source(args.source.source.as_deref(), &args.source.registry, false)?;
    let resolved = if args.all_platforms {
        source::resolve_all(src.as_ref(), args.source.image.as_deref())
            .await
            .with_context(|| unresolved(src.as_ref(), &args.source))?
    } else {
        source::Resolved::Image(Box::new(resolve_in(src.as_ref(), &args.source).await?))
    };
    let (found_name, total) = match &resolved {
        source::Resolved::Image(i) => (i.name.clone(), i.layers.iter().map(|l| l.size).sum()),
        source::Resolved::Index(x) => (
            x.name.clone(),
            x.images
                .iter()
                .flat_map(|i| i.layers.iter().map(|l| l.size))
                .sum(),
        ),
    };
    let name = args
        .name
        .clone()
        .or_else(|| args.source.image.clone())
        .unwrap_or(found_name);
    // Local destinations name the image by its full reference when it is one.
    let name = locald_core::ImageReference::parse(&name)
        .map(|r| r.to_string())
        .unwrap_or(name);
    let destination = to
        .open_destination(vec![name], &args.source.registry)
        .await
        .with_context(|| format!("could not open {}", to.describe()))?;
    let options = CopyOptions {
        cancel,
        reporter: crate::progress::reporter(quiet || args.json, total),
        parallel: 4,
        ..CopyOptions::default()
    };
    let written = match &resolved {
        source::Resolved::Image(image) => {
            copy_image(src.as_ref(), image, destination.as_ref(), &options).await
        }
        source::Resolved::Index(index) => {
            copy_index(src.as_ref(), index, destination.as_ref(), &options).await
        }
    }
    .with_context(|| format!("could not copy the image to {}", to.describe()))?;
    let elapsed = started.elapsed().as_secs_f64();
    if args.json {
        let out = serde_json::json!({
            "source": src.describe(),
            "destination": to.describe(),
            "digest": written.manifest_digest.to_string(),
            "size": written.size,
            "seconds": elapsed,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if !quiet {
        eprintln!(
            "Copied {} ({}) to {} in {elapsed:.1}s",
            written.manifest_digest.short(),
            human_bytes(written.size),
            to.describe()
        );
    }
    println!("{}", written.manifest_digest);
    Ok(())
}
