module nucleus.dev/checkpoint

go 1.19
