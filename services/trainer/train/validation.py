"""Validation: loss and in-batch accuracies over all validation pairs, and text-to-image
R@1/5/10 and mean recall over the whole split (features of every rank, gathered on rank 0).
The online hook steps before each batch is embedded; its pass is bracketed here."""
from __future__ import annotations

import logging
from typing import Any

import torch

from services.trainer.engine.build import Engine
from services.trainer.engine.distributed import DistEnv
from services.trainer.engine.loss import contrastive_loss
from services.trainer.train.config import TrainConfig
from services.trainer.train.data import Batch, SplitData
from services.trainer.train.events import EventSink
from services.trainer.train.online import OnlineHook
from services.trainer.train.retrieval import recall_at_k
from shared.messages import InBatchAccuracy, Validation
from shared.muge import write_predictions

log = logging.getLogger("cnclip.train")


def event_data(result: Validation) -> dict[str, Any]:
    """A validation as event data (the fields it was given)."""
    return result.model_dump(mode="json", exclude_unset=True)


class Validator:
    def __init__(self, config: TrainConfig, env: DistEnv, engine: Engine, data: SplitData, sink: EventSink,
                 online: OnlineHook):
        self.config = config
        self.env = env
        self.engine = engine
        self.data = data
        self.sink = sink
        self.online = online

    @torch.no_grad()
    def _embed(self, batch: Batch):
        chunk = self.engine.runner.to_device(batch.images, batch.input_ids, batch.attention_mask)
        with self.engine.autocast():
            return self.engine.contrastive(chunk.images, chunk.input_ids, chunk.attention_mask)

    def __call__(self, epoch: int, step: int) -> Validation:
        env, config = self.env, self.config
        self.sink.emit("phase", name="validation", step=step)
        log.info("validating (epoch %d @ %d steps)", epoch + 1, step)
        self.online.before_eval("valid", self.data.rank_texts(), epoch=epoch + 1, train_step=step,
                                batches=self.data.num_batches)
        sums = torch.zeros(4, dtype=torch.float64)  # loss * n, img2txt hits, txt2img hits, n
        image_features, text_features, image_ids, text_ids = [], [], [], []
        for index, batch in enumerate(self.data.batches()):
            self.online.on_eval_batch("valid", index, batch)
            self.engine.contrastive.eval()
            image_f, text_f, logit_scale = self._embed(batch)
            out = contrastive_loss(image_f, text_f, logit_scale, kind=config.loss,
                                   dsl_temperature=config.dsl_temperature, gather=False)
            n = image_f.shape[0]
            sums += torch.tensor([out.loss.item() * n, out.img2txt_acc.item() * n, out.txt2img_acc.item() * n, n],
                                 dtype=torch.float64)
            image_features.append(image_f.float().cpu())
            text_features.append(text_f.float().cpu())
            image_ids.extend(batch.image_ids)
            text_ids.extend(batch.text_ids)
        self.online.after_eval("valid")
        totals = env.all_reduce_sum(sums.to(env.device)).cpu()
        count = max(totals[3].item(), 1.0)
        local = (torch.cat(image_features) if image_features else torch.empty(0),
                 torch.cat(text_features) if text_features else torch.empty(0), image_ids, text_ids)
        gathered = env.gather_objects_to_main(local)
        metrics = None
        if gathered is not None:
            metrics = self._retrieval(gathered, epoch, step)
        metrics = env.broadcast_object(metrics)
        img2txt, txt2img = totals[1].item() / count, totals[2].item() / count
        result = Validation(step=step, epoch=epoch + 1, loss=totals[0].item() / count, img2txt_acc=img2txt,
                            txt2img_acc=txt2img, **metrics, acc=InBatchAccuracy(img2txt=img2txt, txt2img=txt2img))
        self.sink.emit("validation", **event_data(result))
        log.info("validation (epoch %d @ %d steps) | loss %.6f | img2txt acc %.2f | txt2img acc %.2f | "
                 "R@1 %.2f | R@5 %.2f | R@10 %.2f | mean recall %.2f | %d texts, %d images",
                 result.epoch, result.step, result.loss, img2txt * 100, txt2img * 100,
                 result.r1, result.r5, result.r10, result.mr, result.texts, result.images)
        self.engine.forward.train()
        return result

    def _retrieval(self, gathered: list[tuple], epoch: int, step: int) -> dict[str, Any]:
        """Deduplicate images by image_id and texts by text_id (a text paired with several
        images, and the padding that evens out the ranks, repeat them); a text's ground truth is
        every image it is paired with in the validation pairs."""
        image_rows: dict[Any, torch.Tensor] = {}
        text_rows: dict[Any, torch.Tensor] = {}
        truth: dict[Any, set[Any]] = {}
        for image_f, text_f, image_ids, text_ids in gathered:
            for row, (image_id, text_id) in enumerate(zip(image_ids, text_ids)):
                image_rows.setdefault(image_id, image_f[row])
                text_rows.setdefault(text_id, text_f[row])
                truth.setdefault(text_id, set()).add(image_id)
        order = lambda ids: sorted(ids, key=lambda i: (isinstance(i, str), i))  # noqa: E731
        text_order = order(text_rows)
        image_order = order(image_rows)
        retrieval = recall_at_k(
            torch.stack([text_rows[t] for t in text_order]),
            torch.stack([image_rows[i] for i in image_order]),
            image_order, [truth[t] for t in text_order],
        )
        path = write_predictions(self.config.run_dir / "validation" / f"epoch{epoch + 1}_step{step}.jsonl",
                                 zip(text_order, retrieval.top_image_ids))
        return {"r1": retrieval.r1, "r5": retrieval.r5, "r10": retrieval.r10, "mr": retrieval.mr,
                "texts": len(text_order), "images": len(image_order), "predictions": str(path)}
