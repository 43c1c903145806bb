package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path"
	"strconv"
	"strings"
	"time"
)

// imageFile is one file of an image's single layer.
type imageFile struct {
	src, dst string
	mode     int64
}

// imageSpec is a one-layer image made of files from this machine.
type imageSpec struct {
	ref        string // e.g. parkfleet.local/pause:1
	files      []imageFile
	entrypoint []string
	cmd        []string
}

func digestOf(b []byte) string { return fmt.Sprintf("sha256:%x", sha256.Sum256(b)) }

// layerTar is the uncompressed layer: the files and their parent folders, owned
// by root, with a fixed time so that the same files give the same digest.
func layerTar(files []imageFile) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	dirs := map[string]bool{}
	for _, f := range files {
		dst := strings.TrimPrefix(path.Clean("/"+f.dst), "/")
		var parents []string
		for d := path.Dir(dst); d != "." && !dirs[d]; d = path.Dir(d) {
			parents = append([]string{d}, parents...)
		}
		for _, d := range parents {
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
				return nil, err
			}
		}
		data, err := os.ReadFile(f.src)
		if err != nil {
			return nil, err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: dst, Mode: f.mode, Size: int64(len(data)), ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeImage writes spec as an OCI image archive (an image layout in a tar), the
// format `ctr images import` reads; containerd names it after the
// io.containerd.image.name annotation.
func writeImage(out string, spec imageSpec) error {
	layer, err := layerTar(spec.files)
	if err != nil {
		return err
	}
	config, _ := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"created":      "1970-01-01T00:00:00Z",
		"config": map[string]any{
			"Entrypoint": spec.entrypoint,
			"Cmd":        spec.cmd,
			"Env":        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			"WorkingDir": "/",
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{digestOf(layer)}},
	})
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digestOf(config), "size": len(config)},
		"layers":        []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digestOf(layer), "size": len(layer)}},
	})
	tag := spec.ref[strings.LastIndex(spec.ref, ":")+1:]
	index, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []any{map[string]any{
			"mediaType":   "application/vnd.oci.image.manifest.v1+json",
			"digest":      digestOf(manifest),
			"size":        len(manifest),
			"platform":    map[string]string{"architecture": "amd64", "os": "linux"},
			"annotations": map[string]string{"io.containerd.image.name": spec.ref, "org.opencontainers.image.ref.name": tag},
		}},
	})
	f, err := os.Create(out + ".tmp")
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	entries := []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{"blobs/sha256/" + strings.TrimPrefix(digestOf(layer), "sha256:"), layer},
		{"blobs/sha256/" + strings.TrimPrefix(digestOf(config), "sha256:"), config},
		{"blobs/sha256/" + strings.TrimPrefix(digestOf(manifest), "sha256:"), manifest},
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: time.Unix(0, 0)}); err != nil {
			f.Close()
			return err
		}
	}
	for _, e := range entries {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: e.name, Mode: 0o644, Size: int64(len(e.data)), ModTime: time.Unix(0, 0)}); err != nil {
			f.Close()
			return err
		}
		if _, err := tw.Write(e.data); err != nil {
			f.Close()
			return err
		}
	}
	if err := tw.Close(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(out+".tmp", out)
}

// importImage imports an OCI or Docker image archive into the node's containerd,
// in the namespace the CRI plugin serves, unpacked for its snapshotter.
func importImage(socket, archive string) error {
	return run("ctr", "--address", socket, "--namespace", "k8s.io", "images", "import", "--snapshotter", "overlayfs", archive)
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// runImage is `pf-controlplane image`: a one-layer OCI image archive from files
// of this machine (a static binary, a script), for the node's tests.
func runImage(args []string) int {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	ref := fs.String("ref", "", "the image's name, e.g. parkfleet.local/busybox:1 (required)")
	out := fs.String("out", "", "the OCI archive to write (required)")
	var adds, entrypoint, cmd listFlag
	fs.Var(&adds, "add", "SRC:DST[:MODE] a file of this machine at DST in the image (repeatable; MODE octal, default 0755)")
	fs.Var(&entrypoint, "entrypoint", "one entrypoint argument (repeatable)")
	fs.Var(&cmd, "cmd", "one cmd argument (repeatable)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *ref == "" || *out == "" || !strings.Contains(*ref, ":") {
		fmt.Fprintln(os.Stderr, "image: --ref NAME:TAG and --out FILE are required")
		return 2
	}
	spec := imageSpec{ref: *ref, entrypoint: entrypoint, cmd: cmd}
	for _, a := range adds {
		parts := strings.Split(a, ":")
		if len(parts) < 2 || len(parts) > 3 {
			fmt.Fprintf(os.Stderr, "image: --add %q: want SRC:DST[:MODE]\n", a)
			return 2
		}
		mode := int64(0o755)
		if len(parts) == 3 {
			m, err := strconv.ParseInt(parts[2], 8, 64)
			if err != nil {
				fmt.Fprintf(os.Stderr, "image: --add %q: %v\n", a, err)
				return 2
			}
			mode = m
		}
		spec.files = append(spec.files, imageFile{src: parts[0], dst: parts[1], mode: mode})
	}
	if err := writeImage(*out, spec); err != nil {
		fmt.Fprintf(os.Stderr, "image: %v\n", err)
		return 1
	}
	return 0
}

// runImportImage is `pf-controlplane import-image --dir DIR ARCHIVE...`: imports
// image archives into the running node of the cluster in DIR.
func runImportImage(args []string) int {
	if len(args) < 3 || args[0] != "--dir" {
		fmt.Fprintln(os.Stderr, "usage: pf-controlplane import-image --dir DIR ARCHIVE...")
		return 2
	}
	st, err := loadNodeState(args[1])
	if err != nil {
		fmt.Fprintf(os.Stderr, "import-image: no node in %s: %v\n", args[1], err)
		return 1
	}
	for _, a := range args[2:] {
		if err := importImage(st.socket(), a); err != nil {
			fmt.Fprintf(os.Stderr, "import-image: %v\n", err)
			return 1
		}
	}
	return 0
}
