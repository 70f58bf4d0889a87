module github.com/chatgw/gateway

go 1.26.0

require (
	github.com/HdrHistogram/hdrhistogram-go v1.4.0
	github.com/gobwas/ws v1.5.0
	github.com/redis/rueidis v1.0.79
	github.com/sethvargo/go-envconfig v1.4.3
	golang.org/x/sys v0.50.0
)

require github.com/gobwas/httphead v0.1.0 // indirect
