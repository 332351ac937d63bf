//! `locald builder ...`: the builder cache.

use std::time::Instant;

use anyhow::Context;
use locald_cache::{Cache, CachedImage, Freshness, PruneOptions, PullOptions, PullPolicy, Pulled};
use locald_core::cancel::Cancel;
use locald_core::source::{BlobReader, BoxFuture, Document, ImageSource};
use locald_core::ImageReference;
use locald_extract::PathFilter;

use super::{absolute_spec, open_source, platform};
use crate::args::{
    BuilderInspectArgs, BuilderLsArgs, BuilderPruneArgs, BuilderPullArgs, BuilderRmArgs,
    BuilderVerifyArgs, PullPolicyArgs, SourceArgs,
};
use crate::human::{ago, bytes as human_bytes};

/// Opens the cache at its default place.
pub fn cache() -> anyhow::Result<Cache> {
    let root = Cache::default_root()?;
    Ok(Cache::open(&root)?)
}

/// Opens the source `--source` names for a builder. With `--pull never`, a
/// source that cannot be opened (a moved layout) may still be in the cache: it
/// is then stood in for by one that fails if read.
pub fn open_builder_source(
    spec: Option<&str>,
    registry: &crate::args::RegistryArgs,
    policy: PullPolicy,
) -> anyhow::Result<Box<dyn ImageSource>> {
    match open_source(spec, registry, true) {
        Ok(s) => Ok(s),
        Err(e) if policy == PullPolicy::Never => Ok(Box::new(Unavailable {
            spec: absolute_spec(spec.unwrap_or("registry:")),
            error: format!("{e:#}"),
        })),
        Err(e) => Err(e),
    }
}

/// What a pull keeps: the tree of `filter`'s paths, and the compressed layers
/// when `keep_layers`.
pub struct Keep {
    /// The paths extracted.
    pub filter: PathFilter,
    /// Keep the layers too (`--keep-layers`).
    pub keep_layers: bool,
}

/// Pulls `args`' image into the cache, keeping what `keep` says.
pub async fn pull_into_cache(
    cache: &Cache,
    args: &SourceArgs,
    policy: &PullPolicyArgs,
    keep: Keep,
    quiet: bool,
    no_bars: bool,
    cancel: Cancel,
) -> anyhow::Result<Pulled> {
    let src = open_builder_source(args.source.as_deref(), &args.registry, policy.policy)?;
    let (plat, explicit) = platform(args.platform.as_deref())?;
    let options = PullOptions {
        filter: keep.filter,
        keep_layers: keep.keep_layers,
        policy: policy.policy,
        check_interval: policy.pull_interval,
        platform: plat,
        explicit_platform: explicit,
        cancel,
    };
    // The bars' total is unknown until the manifest is read; layers come in as
    // they start.
    let reporter = if no_bars && !quiet {
        crate::progress::notes_only()
    } else {
        crate::progress::reporter(quiet, 0)
    };
    let input = locald_build::ImageInput {
        source: src,
        image: args.image.clone(),
    };
    let pulled = locald_build::flow::pull(cache, &input, &options, reporter).await?;
    Ok(pulled)
}

/// A source that could not be opened, standing in for it with `--pull never`:
/// the cache knows it by its spec; anything it would have to read fails.
struct Unavailable {
    spec: String,
    error: String,
}

impl ImageSource for Unavailable {
    fn describe(&self) -> String {
        self.spec.clone()
    }

    fn root<'a>(&'a self, _: Option<&'a str>) -> BoxFuture<'a, locald_core::Result<Document>> {
        Box::pin(async move { Err(locald_core::Error::source(self.error.clone())) })
    }

    fn open_blob<'a>(
        &'a self,
        _: &'a locald_core::oci_spec::image::Descriptor,
    ) -> BoxFuture<'a, locald_core::Result<BlobReader>> {
        Box::pin(async move { Err(locald_core::Error::source(self.error.clone())) })
    }
}

fn filter(full: bool) -> anyhow::Result<PathFilter> {
    if full {
        Ok(PathFilter::default())
    } else {
        PathFilter::new(&["/cnb"]).map_err(anyhow::Error::msg)
    }
}

/// `locald builder pull`
pub async fn pull(args: BuilderPullArgs, quiet: bool, cancel: Cancel) -> anyhow::Result<()> {
    let started = Instant::now();
    let cache = cache()?;
    let pulled = pull_into_cache(
        &cache,
        &args.source,
        &args.policy,
        Keep {
            filter: filter(args.full)?,
            keep_layers: args.keep_layers,
        },
        quiet,
        args.json,
        cancel,
    )
    .await?;
    let elapsed = started.elapsed().as_secs_f64();
    let img = &pulled.image;
    if args.json {
        let out = serde_json::json!({
            "image": img.name,
            "manifest_digest": img.manifest_digest,
            "root_digest": img.root_digest,
            "platform": img.platform.to_string(),
            "tree": pulled.tree,
            "paths": pulled.record.paths,
            "freshness": pulled.freshness,
            "checked_at": pulled.checked_at,
            "extracted": pulled.extracted,
            "layers": img.layers.len(),
            "fetched_layers": pulled.fetched_layers,
            "fetched_bytes": pulled.fetched_bytes,
            "entries": pulled.record.fingerprint.entries,
            "disk_bytes": pulled.record.fingerprint.disk_bytes,
            "seconds": elapsed,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if !quiet {
        let what = format!(
            "{} ({}, {})",
            img.name,
            img.manifest_digest.short(),
            img.platform
        );
        let paths = pulled.record.paths.join(", ");
        let status = match (pulled.extracted, pulled.freshness) {
            (true, _) => format!(
                "Pulled {what} in {elapsed:.2}s: {paths} extracted ({} entries), {} of {} layers fetched ({})",
                pulled.record.fingerprint.entries,
                pulled.fetched_layers,
                img.layers.len(),
                human_bytes(pulled.fetched_bytes),
            ),
            (false, Freshness::Cached) => format!(
                "{what} is cached with {paths} (checked {}; --pull always checks now)",
                ago(pulled.checked_at)
            ),
            (false, _) => format!("{what} is up to date, with {paths} cached"),
        };
        eprintln!("{status}");
    }
    println!("{}", pulled.tree.display());
    Ok(())
}

/// `locald builder ls`
pub async fn ls(args: BuilderLsArgs) -> anyhow::Result<()> {
    // Listing only reads: a read-only or absent cache is fine.
    let root = Cache::default_root()?;
    let images = match Cache::open_existing(&root)? {
        Some(cache) => cache.list()?,
        None => Vec::new(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&images)?);
        return Ok(());
    }
    if images.is_empty() {
        eprintln!("No builders cached in {}", root.display());
        return Ok(());
    }
    let rows: Vec<[String; 7]> = images
        .iter()
        .map(|i: &CachedImage| {
            let mut trees: Vec<String> = i.trees.iter().map(|t| t.paths.join("+")).collect();
            trees.sort();
            [
                i.display_name(),
                i.source.clone(),
                short(&i.manifest_digest),
                i.platform.clone(),
                if trees.is_empty() {
                    "-".to_owned()
                } else {
                    trees.join(",")
                },
                human_bytes(i.disk_bytes),
                ago(i.used_at),
            ]
        })
        .collect();
    let header = [
        "IMAGE",
        "SOURCE",
        "DIGEST",
        "PLATFORM",
        "TREES",
        "SIZE",
        "LAST USED",
    ];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s
    };
    println!("{}", line(header.to_vec()));
    for r in &rows {
        println!("{}", line(r.iter().map(String::as_str).collect()));
    }
    Ok(())
}

fn short(digest: &str) -> String {
    match digest.split_once(':') {
        Some((alg, hex)) => format!("{alg}:{}", hex.chars().take(12).collect::<String>()),
        None => digest.to_owned(),
    }
}

/// The spellings a user's image name may be recorded under.
fn spellings(images: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for i in images {
        out.push(i.clone());
        if let Ok(r) = ImageReference::parse(i) {
            out.push(r.to_string());
        }
    }
    out
}

/// `locald builder rm`
pub async fn rm(args: BuilderRmArgs) -> anyhow::Result<()> {
    let cache = cache()?;
    let mut all = locald_cache::Pruned::default();
    for image in &args.images {
        let pruned = cache
            .remove(&spellings(std::slice::from_ref(image)))
            .await
            .with_context(|| format!("could not remove {image}"))?;
        all.images.extend(pruned.images);
        all.trees += pruned.trees;
        all.blobs += pruned.blobs;
        all.bytes += pruned.bytes;
    }
    print_pruned(&all, args.json)
}

/// `locald builder prune`
pub async fn prune(args: BuilderPruneArgs) -> anyhow::Result<()> {
    let cache = cache()?;
    let pruned = cache
        .prune(&PruneOptions {
            all: args.all,
            older_than: args.older_than,
        })
        .await?;
    print_pruned(&pruned, args.json)
}

fn print_pruned(p: &locald_cache::Pruned, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(p)?);
        return Ok(());
    }
    for i in &p.images {
        println!("removed {i}");
    }
    println!(
        "freed {} ({} trees, {} blobs)",
        human_bytes(p.bytes),
        p.trees,
        p.blobs
    );
    if p.in_use > 0 {
        println!(
            "kept {} unreferenced trees that running builds use; the next prune removes them",
            p.in_use
        );
    }
    Ok(())
}

/// `locald builder verify`
pub async fn verify(args: BuilderVerifyArgs) -> anyhow::Result<()> {
    let cache = cache()?;
    let names = (!args.images.is_empty()).then(|| spellings(&args.images));
    // A tree whose layers are not cached (local sources) is checked against its
    // source, when that is still there.
    let open = |spec: &str| {
        let spec = if spec == "registry" {
            "registry:"
        } else {
            spec
        };
        open_source(Some(spec), &crate::args::RegistryArgs::default(), false).ok()
    };
    let report = cache.verify(names.as_deref(), &open).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for p in &report.problems {
            println!("damaged: {p}");
        }
        for u in &report.unchecked {
            println!("note: {u}");
        }
        println!(
            "checked {} builders: {} blobs and {} trees, {} damaged",
            report.images,
            report.blobs,
            report.trees,
            report.problems.len()
        );
    }
    if report.problems.is_empty() {
        Ok(())
    } else {
        Err(crate::UserError::with_hint(
            format!(
                "{} damaged cache entries were found and removed",
                report.problems.len()
            ),
            "the next `locald builder pull` fetches them again",
        )
        .into())
    }
}

/// `locald builder inspect`
pub async fn inspect(args: BuilderInspectArgs, quiet: bool, cancel: Cancel) -> anyhow::Result<()> {
    let cache = cache()?;
    let pulled = pull_into_cache(
        &cache,
        &args.source,
        &args.policy,
        Keep {
            filter: filter(false)?,
            keep_layers: false,
        },
        quiet,
        args.json,
        cancel,
    )
    .await?;
    let img = &pulled.image;
    if !pulled.tree.join("cnb/lifecycle").is_dir() {
        return Err(crate::UserError::with_hint(
            format!(
                "{} is not a CNB builder image: it has no /cnb/lifecycle",
                img.name
            ),
            "builders are images made by `pack builder create`, e.g. heroku/builder:22",
        )
        .into());
    }
    let info = locald_build::builder::read_builder(&pulled.tree, &img.config)
        .with_context(|| format!("could not read the builder metadata of {}", img.name))?;
    if args.json {
        let out = serde_json::json!({
            "image": img.name,
            "manifest_digest": img.manifest_digest,
            "platform": img.platform.to_string(),
            "tree": pulled.tree,
            "builder": info,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let list = |v: &[locald_build::builder::ApiVersion]| {
        if v.is_empty() {
            "(none)".to_owned()
        } else {
            v.iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "(unknown)".to_owned());
    println!("Builder:        {}", img.name);
    println!("Digest:         {}", img.manifest_digest);
    println!("Platform:       {}", img.platform);
    if let Some(d) = &info.description {
        println!("Description:    {d}");
    }
    if let Some(c) = &info.created_by {
        println!("Created by:     {c}");
    }
    println!("Lifecycle:      {}", opt(&info.lifecycle_version));
    println!("  Platform APIs:  {}", list(&info.platform_apis.supported));
    if !info.platform_apis.deprecated.is_empty() {
        println!("    deprecated:   {}", list(&info.platform_apis.deprecated));
    }
    println!("  Buildpack APIs: {}", list(&info.buildpack_apis.supported));
    if !info.buildpack_apis.deprecated.is_empty() {
        println!(
            "    deprecated:   {}",
            list(&info.buildpack_apis.deprecated)
        );
    }
    println!("Stack:          {}", opt(&info.stack_id));
    for t in &info.targets {
        let mut s = format!("{}/{}", t.os, t.arch);
        if let Some(v) = &t.variant {
            s.push_str(&format!("/{v}"));
        }
        if let Some(d) = &t.distro_name {
            s.push_str(&format!(
                " ({d} {})",
                t.distro_version.as_deref().unwrap_or("")
            ));
        }
        println!("Target:         {}", s.trim_end());
    }
    let id = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_else(|| "?".to_owned());
    println!(
        "Build user:     CNB_USER_ID={} CNB_GROUP_ID={}",
        id(info.user_id),
        id(info.group_id)
    );
    if info.run_images.is_empty() {
        println!("Run image:      (none declared)");
    }
    for r in &info.run_images {
        if r.mirrors.is_empty() {
            println!("Run image:      {}", r.image);
        } else {
            println!(
                "Run image:      {} (mirrors: {})",
                r.image,
                r.mirrors.join(", ")
            );
        }
    }
    println!("Buildpacks:     {}", info.buildpacks.len());
    let w = info
        .buildpacks
        .iter()
        .map(|b| b.id.len())
        .max()
        .unwrap_or(0);
    for b in &info.buildpacks {
        let line = format!(
            "  {:<w$}  {}  {}",
            b.id,
            b.version,
            b.homepage.as_deref().unwrap_or("")
        );
        println!("{}", line.trim_end());
    }
    println!(
        "Order:          {} group{}",
        info.order.len(),
        if info.order.len() == 1 { "" } else { "s" }
    );
    for (n, g) in info.order.iter().enumerate() {
        let entries: Vec<String> = g
            .group
            .iter()
            .map(|e| {
                let mut s = e.id.clone();
                if let Some(v) = &e.version {
                    s.push_str(&format!("@{v}"));
                }
                if e.optional {
                    s.push_str(" (optional)");
                }
                s
            })
            .collect();
        println!("  {}. {}", n + 1, entries.join(", "));
    }
    Ok(())
}
