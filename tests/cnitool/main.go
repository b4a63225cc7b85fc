// xdpnet-cnitool: a small driver of the reference CNI library (libcni), used by the tests to
// call a conflist exactly as a container runtime does (result caching, prevResult chaining,
// capability args, CHECK and DEL from the cache).
//
// Built offline against Debian's golang-github-appc-cni-dev:
//   GO111MODULE=off GOPATH=/usr/share/gocode GOPROXY=off go build -o xdpnet-cnitool .
//
// Usage: xdpnet-cnitool add|check|del|gc CONFLIST CONTAINER_ID NETNS IFNAME [CAP_ARGS_JSON]
//   gc takes VALID_ATTACHMENTS_JSON (a list of {containerID, ifname}) in place of CAP_ARGS.
// CNI_PATH (colon separated) says where the plugins are. The result (add) is printed as JSON;
// an error is printed as a CNI error object and the exit status is 1.
//
// libcni 1.1 has no GC; this driver does what libcni 1.2 does: GC each plugin of the list
// whose VERSION answer supports 1.1.0, with cni.dev/valid-attachments.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
)

func fail(err error) {
	if e, ok := err.(*types.Error); ok {
		b, _ := json.Marshal(e)
		fmt.Println(string(b))
	} else {
		b, _ := json.Marshal(map[string]interface{}{"code": 999, "msg": err.Error()})
		fmt.Println(string(b))
	}
	os.Exit(1)
}

func gc(ctx context.Context, list *libcni.NetworkConfigList, paths []string, valid []byte) error {
	var attachments []interface{}
	if err := json.Unmarshal(valid, &attachments); err != nil {
		return fmt.Errorf("valid attachments: %v", err)
	}
	exec := &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}}
	for _, p := range list.Plugins {
		path, err := invoke.FindInPath(p.Network.Type, paths)
		if err != nil {
			return err
		}
		info, err := invoke.GetVersionInfo(ctx, path, exec)
		if err != nil {
			return err
		}
		supported := false
		for _, v := range info.SupportedVersions() {
			if v == "1.1.0" {
				supported = true
			}
		}
		if !supported {
			continue
		}
		var conf map[string]interface{}
		if err := json.Unmarshal(p.Bytes, &conf); err != nil {
			return err
		}
		conf["cniVersion"] = "1.1.0"
		conf["name"] = list.Name
		conf["cni.dev/valid-attachments"] = attachments
		b, err := json.Marshal(conf)
		if err != nil {
			return err
		}
		args := &invoke.Args{Command: "GC", Path: strings.Join(paths, ":")}
		if err := invoke.ExecPluginWithoutResult(ctx, path, b, args, exec); err != nil {
			return err
		}
	}
	return nil
}

func main() {
	if len(os.Args) < 6 {
		fmt.Fprintln(os.Stderr, "usage: xdpnet-cnitool add|check|del|gc CONFLIST CONTAINER_ID NETNS IFNAME [JSON]")
		os.Exit(2)
	}
	cmd, confPath, id, netns, ifname := os.Args[1], os.Args[2], os.Args[3], os.Args[4], os.Args[5]
	extra := []byte("{}")
	if len(os.Args) > 6 {
		extra = []byte(os.Args[6])
	}
	paths := filepath.SplitList(os.Getenv("CNI_PATH"))
	list, err := libcni.ConfListFromFile(confPath)
	if err != nil {
		fail(err)
	}
	cacheDir := os.Getenv("CNI_CACHE_DIR")
	cni := libcni.NewCNIConfigWithCacheDir(paths, cacheDir, nil)
	ctx := context.Background()
	if cmd == "gc" {
		if err := gc(ctx, list, paths, extra); err != nil {
			fail(err)
		}
		return
	}
	var caps map[string]interface{}
	if err := json.Unmarshal(extra, &caps); err != nil {
		fail(fmt.Errorf("capability args: %v", err))
	}
	rt := &libcni.RuntimeConf{
		ContainerID: id,
		NetNS:       netns,
		IfName:      ifname,
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", "cnitool"},
			{"K8S_POD_NAME", id},
		},
		CapabilityArgs: caps,
		CacheDir:       cacheDir,
	}
	switch cmd {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		b, err := json.Marshal(res)
		if err != nil {
			fail(err)
		}
		fmt.Println(string(b))
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q\n", cmd)
		os.Exit(2)
	}
}
